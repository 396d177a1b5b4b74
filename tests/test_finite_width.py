"""ntkit.finite_width: 1/n corrections and exact samplers, against the note's numbers and Monte Carlo.

Reference: ../shared/research/finite_width.md (tables A, B, C, G of §4.2; test plan §4.3).

Monte Carlo tolerances. A mean over M networks has standard error s.e. = sd / sqrt(M) (sample
sd). An estimate of the 1/n coefficient, X_n = n (mean - K), carries on top a systematic
O(1/n^2) term c/n. If X_n = X + c/n + noise, then X_{n/2} - X_n = c/n is that bias at width n,
so we allow |X_n - X| <= 5 s.e.(X_n) + |X_{n/2} - X_n| ("bias allowance", measured in the same
test). Identities that are exact at any width get 5 s.e. alone. Every Monte Carlo test also
rejects a wrong prediction with the same tolerance (negative control).
"""

import math

import pytest
import torch

import ntkit as nk
from ntkit.finite_width import (
    MLPSpec, corrected_kernel, corrections, read_mlp, sample_kernels,
)
from ntkit.finite_width._expectations import PairGaussian, _closed_form, _PolarGrid, _TensorGrid
from ntkit.finite_width._recursions import _f_term, _f_update, _four_point, pair_statistics

SQRT2 = math.sqrt(2.0)
#: The note's two inputs: x.x/d = 1, 1 and 0.5 (d = 2).
X_PAIR = torch.tensor([[SQRT2, 0.0], [SQRT2 / 2, math.sqrt(1.5)]], dtype=torch.float64)
X_ONE = torch.ones(1, 4, dtype=torch.float64)


def spec(act, depth, c_w, c_b=0.0, lambda_w=1.0, lambda_b=0.0):
    return MLPSpec((act,) * (depth - 1), (c_w,) * depth, (c_b,) * depth, (lambda_w,) * depth, (lambda_b,) * depth)


def single(s, q=1.0):
    return pair_statistics(s, torch.tensor([[q, q, q]], dtype=torch.float64), torch.tensor([True]))


def pair(s):
    return pair_statistics(s, torch.tensor([[1.0, 0.5, 1.0]], dtype=torch.float64), torch.tensor([False]))


def mean_se(samples):
    """Mean over networks (dim 0) and its standard error."""
    return samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])


def covariance_se(a, b):
    """Cov(a, b) over networks and its standard error (the sd of the centred products / sqrt(M))."""
    products = (a - a.mean()) * (b - b.mean())
    return products.mean(), products.std() / math.sqrt(a.shape[0])


def within(estimate, prediction, tolerance):
    return bool(((estimate - prediction).abs() <= tolerance).all())


# -- the note's reference numbers (deterministic, to the digits printed there) ---------------------


def test_table_a_relu_single_input():
    s = single(spec(nk.ReLU(), 3, 2.0, lambda_w=1.0, lambda_b=0.5))
    assert s["V"][0, 0, 0].item() == pytest.approx(40.0, abs=1e-9)  # 5 (l - 1) K^2, K = 2
    assert s["D"][0, 0, 0].item() == pytest.approx(39.0, abs=1e-9)
    assert s["F"][0, 0, 0, 0, 0].item() == pytest.approx(18.0, abs=1e-9)
    assert s["K1"][0, 0].item() == 0.0 and abs(s["T1"][0, 0].item()) < 1e-12  # exact at all orders


def test_table_b_tanh_single_input():
    s = single(spec(nk.Tanh(), 4, 1.0))
    expected = {"K": 0.1667, "T": 0.7357, "V": 0.0501, "K1": -0.0527, "T1": -0.1227, "D": -0.0088, "F": 0.0798}
    for name, value in expected.items():
        got = s[name].reshape(-1)[0].item()
        assert got == pytest.approx(value, abs=5.1e-5), name  # half a unit of the 4th decimal


def test_table_c_two_inputs():
    relu = pair(spec(nk.ReLU(), 3, 2.0))
    v = relu["V"][0]
    for (u, w), value in {(0, 0): 40.0, (0, 1): 23.31, (0, 2): 16.87, (1, 1): 21.26}.items():
        assert v[u, w].item() == pytest.approx(value, abs=5.1e-3)
    assert relu["K1"][0, 1].item() == pytest.approx(-0.193, abs=5.1e-4)
    assert relu["K1"][0, 0].item() == 0.0
    tanh = pair(spec(nk.Tanh(), 4, 1.0))
    v = tanh["V"][0]
    for (u, w), value in {(0, 0): 0.0501, (0, 1): 0.0279, (0, 2): 0.0099, (1, 1): 0.0713}.items():
        assert v[u, w].item() == pytest.approx(value, abs=5.1e-5)
    assert tanh["K1"][0, 0].item() == pytest.approx(-0.0527, abs=5.1e-5)
    assert tanh["K1"][0, 1].item() == pytest.approx(-0.0291, abs=5.1e-5)


def test_table_g_ntk_two_inputs():
    s = pair(spec(nk.Tanh(), 4, 1.0))
    assert s["T1"][0, 1].item() == pytest.approx(-0.093, abs=5.1e-4)
    assert s["D"][0, 1, 1].item() == pytest.approx(0.116, abs=5.1e-4)
    assert s["D"][0, 0, 1].item() == pytest.approx(0.020, abs=5.1e-4)
    assert s["F"][0, 0, 1, 0, 1].item() == pytest.approx(0.170, abs=5.1e-4)
    assert s["F"][0, 0, 1, 1, 1].item() == pytest.approx(0.033, abs=5.1e-4)
    s = pair(spec(nk.Tanh(), 3, 1.5, c_b=0.1, lambda_w=1.0, lambda_b=0.5))
    d, f = s["D"][0], s["F"][0]
    expected = {
        d[0, 1]: -0.106, d[1, 0]: -0.234, d[0, 2]: -0.075, f[0, 1, 0, 1]: 0.875, f[0, 0, 1, 1]: 0.071,
        f[0, 1, 1, 0]: 0.039, f[0, 1, 1, 1]: 0.147, s["T1"][0, 1]: 0.039,
    }
    for got, value in expected.items():
        assert got.item() == pytest.approx(value, abs=5.1e-4)


# -- the deterministic face: presets, closed forms vs quadrature, layout --------------------------


@pytest.mark.parametrize(
    "parameterization, act",
    [("ntk", nk.ReLU), ("standard", nk.ReLU), ("ntk", nk.Erf), ("standard", nk.Erf),
     ("standard", lambda: nk.LeakyReLU(0.2)), ("ntk", nk.Tanh), ("standard", nk.GELU)],
)
def test_infinite_width_part_is_the_kernel(parameterization, act):
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layers = [nk.Dense(16, W_std=1.3, b_std=0.2, parameterization=parameterization), act()]
    layers += [nk.Dense(16, W_std=1.1, b_std=0.3, parameterization=parameterization), act()]
    net = nk.serial(*layers, nk.Dense(2, W_std=1.2, parameterization=parameterization))
    c, k = corrections(net, x), net.kernel(x)
    torch.testing.assert_close(c.nngp, k.nngp, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(c.ntk, k.ntk, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(c.ntk_correction, c.ntk_correction.T, rtol=0, atol=0)


def test_closed_form_agrees_with_quadrature():
    """Erf by autograd of Williams' closed form vs Elementwise(erf) by Price's theorem + quadrature."""
    x1, x2 = X_PAIR[:1], X_PAIR[1:]  # one pair problem: its aa, ab and bb entries
    closed = corrections(spec(nk.Erf(), 4, 1.7, c_b=0.1, lambda_w=0.8, lambda_b=0.3), x1, x2)
    quad = corrections(spec(nk.Elementwise(torch.erf), 4, 1.7, c_b=0.1, lambda_w=0.8, lambda_b=0.3), x1, x2)
    # Both exact to ~1e-12 in K; the quadrature's 4th/5th derivatives of erf lose a few digits.
    torch.testing.assert_close(quad.nngp_correction, closed.nngp_correction, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(quad.ntk_correction, closed.ntk_correction, rtol=1e-8, atol=1e-10)


def test_blocks_duplicates_and_corrected_kernel():
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(1, 5, generator=g, dtype=torch.float64)
    net = nk.serial(
        nk.Dense(32, b_std=0.2), nk.Erf(), nk.Dense(32, b_std=0.2), nk.Erf(), nk.Dense(32), nk.Erf(), nk.Dense(1)
    )
    whole = corrections(net, torch.cat([x1, x2, x1[:1]]))
    block = corrections(net, x1, x2)
    torch.testing.assert_close(block.ntk_correction, whole.ntk_correction[:2, 2:3], rtol=0, atol=1e-15)
    torch.testing.assert_close(whole.nngp_correction[3], whole.nngp_correction[0], rtol=0, atol=1e-15)
    k = corrected_kernel(net, x1)  # default width: the net's 32
    small = corrections(net, x1)
    torch.testing.assert_close(k.ntk, small.ntk + small.ntk_correction / 32)
    assert bool((small.nngp_correction.diagonal() < 0).all())  # erf, like tanh: K^1 < 0 (pitfall 1)


# -- Monte Carlo: identities exact at any width ----------------------------------------------------


@pytest.mark.parametrize("act", [nk.ReLU(), nk.Tanh()])
def test_layer_two_is_exact(act):
    """L = 2: E G = K, E H = Theta and n Cov(G_u, G_v) = V at any n (layer 1 is Gaussian)."""
    s, n, m = spec(act, 2, 1.6, c_b=0.2, lambda_w=1.0, lambda_b=0.5), 8, 20_000
    samples = sample_kernels(s, X_PAIR, n_networks=m, width=n, seed=11)
    c, theory = corrections(s, X_PAIR), pair(s)
    for estimate, prediction in ((samples.nngp, c.nngp), (samples.ntk, c.ntk)):
        mean, se = mean_se(estimate)
        assert within(mean, prediction, 5 * se)
        # negative control: a "correction" V/n (variance mistaken for a mean shift, pitfall 1)
        assert not within(mean, prediction + theory["V"][0, 0, 0] / n, 5 * se)
    g = samples.nngp.reshape(m, 4)[:, [0, 1, 3]]  # slots aa, ab, bb
    for u, w in ((0, 0), (0, 1), (0, 2), (1, 1)):
        cov, se = covariance_se(g[:, u], g[:, w])
        assert within(n * cov, theory["V"][0, u, w], 5 * n * se)
        if u == w:  # negative control on the variances (s.e. ~ 2% of V at M = 20 000): V off by 15%
            assert not within(n * cov, 1.15 * theory["V"][0, u, w], 5 * n * se)


def test_relu_single_input_means_are_exact():
    """ReLU, one input: E G = K and E Theta_hat = Theta at every width, depth and C_b."""
    net = nk.serial(*[nk.Dense(8, W_std=SQRT2, b_std=0.3), nk.ReLU()] * 3, nk.Dense(1, W_std=SQRT2, b_std=0.3))
    samples = sample_kernels(net, X_ONE, n_networks=20_000, seed=12)
    c = corrections(net, X_ONE)
    v = single(read_mlp(net, in_features=4), q=1.0)["V"][0, 0, 0]
    assert float(c.nngp_correction) == 0.0 and abs(float(c.ntk_correction)) < 1e-12
    for estimate, prediction in ((samples.nngp, c.nngp), (samples.ntk, c.ntk)):
        mean, se = mean_se(estimate)
        assert within(mean, prediction, 5 * se)
        assert not within(mean, prediction + v / 8, 5 * se)  # negative control


def test_sampler_matches_dense_networks():
    """The projector sampler (outputs=m) and its readout-averaged form vs plain dense networks."""
    s, n, outputs, m = spec(nk.Tanh(), 3, 1.5, c_b=0.1, lambda_w=1.0, lambda_b=0.5), 4, 3, 20_000
    fast = sample_kernels(s, X_PAIR, n_networks=m, width=n, outputs=outputs, seed=13)
    averaged = sample_kernels(s, X_PAIR, n_networks=m, width=n, seed=14)
    dense = _dense_ntk(s, X_PAIR, n, outputs, m, seed=15)
    wrong = _dense_ntk(spec(nk.Tanh(), 3, 1.65, c_b=0.1, lambda_w=1.0, lambda_b=0.5), X_PAIR, n, outputs, m, seed=16)
    for a, b in ((fast.ntk, dense), (averaged.ntk, dense)):
        (mean_a, se_a), (mean_b, se_b) = mean_se(a), mean_se(b)
        assert within(mean_a, mean_b, 5 * (se_a**2 + se_b**2).sqrt())
    (mean_a, se_a), (mean_w, se_w) = mean_se(fast.ntk), mean_se(wrong)
    assert not within(mean_a, mean_w, 5 * (se_a**2 + se_w**2).sqrt())  # negative control: C_W 10% off
    # the spread, not only the mean: Var of Theta_11 with m sampled outputs
    var_a, se_va = covariance_se(fast.ntk[:, 0, 0], fast.ntk[:, 0, 0])
    var_b, se_vb = covariance_se(dense[:, 0, 0], dense[:, 0, 0])
    assert abs(var_a - var_b) <= 5 * math.hypot(se_va, se_vb)


def _dense_ntk(s, x, n, outputs, m, seed):
    """Traced NTK of m dense networks: explicit weights, J^(l) = J^(l+1) W^(l+1) diag(sigma')."""
    g = torch.Generator().manual_seed(seed)
    widths = [x.shape[1]] + [n] * (s.depth - 1) + [outputs]
    posts, slopes = [x.T.expand(m, -1, -1)], []
    weights = []
    for layer in range(s.depth):
        w = torch.randn(m, widths[layer + 1], widths[layer], generator=g, dtype=torch.float64)
        w = w * math.sqrt(s.c_w[layer] / widths[layer])
        b = torch.randn(m, widths[layer + 1], 1, generator=g, dtype=torch.float64) * math.sqrt(s.c_b[layer])
        weights.append(w)
        z = w @ posts[-1] + b
        if layer < s.depth - 1:
            zz = z.detach().requires_grad_(True)
            with torch.enable_grad():
                (slope,) = torch.autograd.grad(s.activations[layer].fn(zz).sum(), zz)
            posts.append(s.activations[layer].fn(z))
            slopes.append(slope)
    theta, jac = 0.0, torch.eye(outputs, dtype=torch.float64).expand(m, x.shape[0], outputs, outputs)
    for layer in range(s.depth - 1, -1, -1):
        st = posts[layer]
        term = s.lambda_b[layer] + s.lambda_w[layer] / widths[layer] * (st.transpose(1, 2) @ st)
        theta = theta + term * torch.einsum("bamj,bcmj->bac", jac, jac) / outputs
        if layer > 0:
            jac = (jac @ weights[layer][:, None]) * slopes[layer - 1].transpose(1, 2)[:, :, None, :]
    return theta


# -- Monte Carlo: the 1/n mean corrections ---------------------------------------------------------


def _coefficient(samples, prediction, n):
    """n (mean - K) and its standard error."""
    mean, se = mean_se(samples)
    return n * (mean - prediction), n * se


def _check_correction(run, entries, theory, widths):
    """|X_n - X| <= 5 s.e. + |X_{n/2} - X_n|, and the sign-flipped X is rejected (negative control)."""
    (coarse, _), (fine, se) = (run(w) for w in widths)
    tolerance = 5 * se + (coarse - fine).abs()
    for entry in entries:
        assert within(fine[entry], theory[entry], tolerance[entry]), (entry, fine[entry], theory[entry])
        assert not within(fine[entry], -theory[entry], tolerance[entry]), ("control", entry)


def test_kernel_correction_tanh_one_and_two_inputs():
    """K^1 of tanh at criticality (table C: -0.0527, -0.0291) from the collective sampler."""
    s = spec(nk.Tanh(), 4, 1.0)
    c = corrections(s, X_PAIR)

    def run(n):
        samples = sample_kernels(s, X_PAIR, n_networks=120_000, width=n, ntk=False, seed=21 + n)
        return _coefficient(samples.nngp, c.nngp, n)

    _check_correction(run, [(0, 0), (0, 1), (1, 1)], c.nngp_correction, (16, 32))


def test_ntk_correction_tanh_one_and_two_inputs():
    """Theta^1 of tanh at criticality (tables B, G: -0.1227, -0.093) from the NTK sampler."""
    s = spec(nk.Tanh(), 4, 1.0)
    c = corrections(s, X_PAIR)

    def run(n):
        samples = sample_kernels(s, X_PAIR, n_networks=16_000, width=n, seed=31 + n)
        return _coefficient(samples.ntk, c.ntk, n)

    _check_correction(run, [(0, 0), (0, 1), (1, 1)], c.ntk_correction, (16, 32))


def test_corrections_relu_two_inputs():
    """ReLU, C_W = 2, L = 3, inputs at x.x'/d = -0.5: K^1_12 = -0.872, Theta^1_12 = -0.478."""
    s = spec(nk.ReLU(), 3, 2.0)
    x = torch.tensor([[SQRT2, 0.0], [-SQRT2 / 2, math.sqrt(1.5)]], dtype=torch.float64)
    c = corrections(s, x)
    assert c.nngp_correction[0, 1].item() == pytest.approx(-0.872, abs=1e-3)
    assert c.ntk_correction[0, 1].item() == pytest.approx(-0.478, abs=1e-3)
    runs = {n: sample_kernels(s, x, n_networks=20_000, width=n, seed=41 + n) for n in (16, 32)}
    for field, prediction, theory in (("nngp", c.nngp, c.nngp_correction), ("ntk", c.ntk, c.ntk_correction)):
        _check_correction(lambda n: _coefficient(getattr(runs[n], field), prediction, n), [(0, 1)], theory, (16, 32))


# -- bad input ----------------------------------------------------------------------------------


def _mlp(*middle, last=nk.Dense(1)):
    return nk.serial(nk.Dense(8), *middle, last)


@pytest.mark.parametrize(
    "net, message",
    [
        (_mlp(nk.LayerNorm(), nk.Dense(8)), "serial[1] (LayerNorm): expected an activation here"),
        (_mlp(nk.ReLU(), nk.Dropout(0.1)), "serial[2] (Dropout): expected Dense here"),
        (_mlp(nk.Sign()), "serial[1] (Sign): activation not supported"),
        (nk.serial(nk.Dense(8), nk.ReLU()), "must end with a Dense readout"),
        (nk.parallel(nk.Dense(8), nk.Dense(8)), "finite_width needs serial(Dense, act"),
        (_mlp(nk.ReLU(), nk.Dense(4), nk.ReLU()), "hidden widths [8, 4] differ; pass width="),
        (_mlp(nk.ReLU(), last=nk.Dense(1)), None),
    ],
)
def test_unsupported_architectures(net, message):
    x = torch.ones(2, 3, dtype=torch.float64)
    if message is None:  # the control: a supported network goes through
        assert corrections(net, x).nngp.shape == (2, 2)
        return
    for call in (lambda: corrections(net, x), lambda: sample_kernels(net, x, n_networks=2)):
        with pytest.raises(nk.NtkitError) as error:
            call()
        assert message in str(error.value)
        assert "supports" in str(error.value) or "width" in str(error.value)


def test_bad_widths_inputs_and_specs():
    net = _mlp(nk.Tanh())
    x = torch.ones(2, 3)
    for width in (1, 0, 2.5, True):
        with pytest.raises(nk.NtkitError, match="width must be an integer >= 2"):
            corrected_kernel(net, x, width=width)
        with pytest.raises(nk.NtkitError, match="width must be an integer >= 2"):
            sample_kernels(net, x, n_networks=2, width=width)
    with pytest.raises(nk.NtkitError, match="hidden width must be an integer >= 2"):
        corrections(nk.serial(nk.Dense(1), nk.ReLU(), nk.Dense(1)), x)
    with pytest.raises(nk.NtkitError, match=r"x1 has shape \(2, 3, 1\); finite_width needs \(N, features\)"):
        corrections(net, x[..., None])
    with pytest.raises(nk.NtkitError, match="zero first-layer variance"):
        corrections(net, torch.zeros(1, 3))
    with pytest.raises(nk.NtkitError, match="n_networks must be a positive integer"):
        sample_kernels(net, x, n_networks=0)
    with pytest.raises(nk.NtkitError, match="MLPSpec: 2 weight layers need 1 activations, got 0"):
        MLPSpec((), (1.0, 1.0), (0.0, 0.0), (1.0, 1.0), (0.0, 0.0))
    with pytest.raises(nk.NtkitError, match="c_w entries must be finite numbers >= 0"):
        MLPSpec((nk.ReLU(),), (1.0, -1.0), (0.0, 0.0), (1.0, 1.0), (0.0, 0.0))
    with pytest.raises(nk.NtkitError, match="an MLPSpec has no widths; pass width="):
        sample_kernels(spec(nk.ReLU(), 2, 2.0), x, n_networks=2)


# -- the fast pair engine against the slow per-expectation reference ------------------------------


class _ReferenceGaussian:
    """The pair statistics as first implemented: autograd of the closed forms (``_closed_form``) and
    one quadrature call per expectation (``_PolarGrid``: polar Gauss-Legendre between the kinks;
    Erf: the trapezoid grid in whitened coordinates, 301 nodes)."""

    def __init__(self, act, k, same):
        self.act, self.k, self.same = act, k, same
        self.g, self.jac, self.hess, self.gp, self.jacp, self.hessp = _closed_form(act, k, same)
        self._grid = _PolarGrid(act, k) if isinstance(act, nk.ABReLU) else _TensorGrid(act.fn, k, 301)

    def expect(self, factors):
        return self._grid.expect(factors)

    stein = PairGaussian.stein


def _reference_layer(gauss, s, c_w, c_b, l_w, l_b):
    """The recursions of the note §2.1-2.2 written with einsum over the dense (P, 3, 3, 3) Jacobians."""
    g, gp, jac, jacp, hess, hessp = gauss.g, gauss.gp, gauss.jac, gauss.jacp, gauss.hess, gauss.hessp
    k1, t1, v, d, f, theta = s["K1"], s["T1"], s["V"], s["D"], s["F"], s["T"]
    connected = _four_point(gauss, (0, 0), (0, 0)) - g[:, :, None] * g[:, None, :]
    mixed = (_four_point(gauss, (0, 0), (1, 1)) - g[:, :, None] * gp[:, None, :]) * theta[:, None, :]
    collective = torch.einsum("pwu,pux,pvx->pwv", jac, v, jac)
    x = torch.einsum("pwu,pvx,pux->pwv", jac, jacp, v) * theta[:, None, :]
    x = x + torch.einsum("pwu,puv->pwv", jac, d) * gp[:, None, :]
    shift = torch.einsum("pwu,pu->pw", jac, k1) + 0.5 * torch.einsum("pwuv,puv->pw", hess, v)
    shift_p = torch.einsum("pwu,pu->pw", jacp, k1) + 0.5 * torch.einsum("pwuv,puv->pw", hessp, v)
    t1_new = l_w * shift + c_w * (shift_p * theta + gp * t1 + torch.einsum("pwu,puw->pw", jacp, d) + _f_term(f, jacp))
    return {
        "K": c_b + c_w * g, "T": l_b + l_w * g + c_w * gp * theta, "K1": c_w * shift, "T1": t1_new,
        "V": c_w**2 * (connected + collective),
        "D": c_w * l_w * (connected + collective) + c_w**2 * (mixed + x),
        "F": _f_update(gauss, f, theta, c_w),
    }


def _reference_pair_statistics(s, q, same):
    state = {
        "K": s.c_b[0] + s.c_w[0] * q, "T": s.lambda_b[0] + s.lambda_w[0] * q,
        "K1": q.new_zeros(q.shape[0], 3), "T1": q.new_zeros(q.shape[0], 3),
        "V": q.new_zeros(q.shape[0], 3, 3), "D": q.new_zeros(q.shape[0], 3, 3),
        "F": q.new_zeros(q.shape[0], 2, 2, 2, 2),
    }
    for layer, act in enumerate(s.activations):
        coefficients = (s.c_w[layer + 1], s.c_b[layer + 1], s.lambda_w[layer + 1], s.lambda_b[layer + 1])
        state = _reference_layer(_ReferenceGaussian(act, state["K"], same), state, *coefficients)
    return state


def _random_pairs(p, seed):
    """Input products of p pairs: variances in [0.2, 2], correlations in (-1, 1) with the ends
    (|rho| = 1 - 1e-9: the clamped arc-cosine branch), and identical samples."""
    g = torch.Generator().manual_seed(seed)
    kaa = 0.2 + 1.8 * torch.rand(p, generator=g, dtype=torch.float64)
    kbb = 0.2 + 1.8 * torch.rand(p, generator=g, dtype=torch.float64)
    rho = 2 * torch.rand(p, generator=g, dtype=torch.float64) - 1
    rho[:2] = torch.tensor([1 - 1e-9, -1 + 1e-9])
    same = torch.zeros(p, dtype=torch.bool)
    same[-2:] = True
    kbb[same] = kaa[same]
    rho[same] = 1.0
    return torch.stack([kaa, rho * torch.sqrt(kaa * kbb), kbb], 1), same


@pytest.mark.parametrize(
    "act", [nk.ReLU(), nk.LeakyReLU(0.2), nk.Abs(), nk.ABReLU(-0.3, 1.2), nk.Erf(), nk.Erf(1.3, 0.7, 0.2)],
    ids=["relu", "leaky", "abs", "abrelu", "erf", "erf_shifted"],
)
def test_pair_engine_matches_the_reference(act):
    """All of K, T, K1, T1, V, D, F of the fast engine vs the slow reference, L = 4, random pairs.

    ReLU family: both exact, so only round-off of O(100) operations per layer differs: 1e-12 of
    the largest entry of each statistic. Erf: the reference's 601-node trapezoid rule and the
    correlation integral are each accurate to ~1e-13 (the module docstrings; 301 nodes is about 150
    per standard deviation here): 1e-11.
    """
    s = spec(act, 4, 1.5, c_b=0.2, lambda_w=0.8, lambda_b=0.3)
    q, same = _random_pairs(24, seed=3)
    fast, slow = pair_statistics(s, q, same), _reference_pair_statistics(s, q, same)
    tolerance = 1e-12 if isinstance(act, nk.ABReLU) else 1e-11
    for name, reference in slow.items():
        scale = reference.abs().max().item()
        assert (fast[name] - reference).abs().max().item() <= tolerance * scale, name
    # negative control: the reference one layer deeper is not within the tolerance
    deeper = _reference_pair_statistics(spec(act, 5, 1.5, c_b=0.2, lambda_w=0.8, lambda_b=0.3), q, same)
    assert (fast["K1"] - deeper["K1"]).abs().max().item() > tolerance * deeper["K1"].abs().max().item()


@pytest.mark.parametrize("act", [nk.ReLU(), nk.ABReLU(-0.3, 1.2), nk.Erf(), nk.Erf(0.8, 1.6, -0.1)])
def test_hand_derivatives_match_autograd(act):
    """PairGaussian's g, gp and their K-derivatives (by hand) vs autograd of the closed forms.

    Round-off only; the Hessians of gp grow like 1/sin(theta)^3 near the clamped |rho| = 1 - 1e-7,
    so the comparison is relative to max(1, |value|) entry by entry, at 1e-9 there and 1e-12 elsewhere.
    """
    q, same = _random_pairs(40, seed=4)
    mine = PairGaussian(act, q, same)
    reference = _closed_form(act, q, same)
    names = ("g", "jac", "hess", "gp", "jacp", "hessp")
    for name, expected in zip(names, reference):
        got = getattr(mine, name)
        error = (got - expected).abs() / expected.abs().clamp(min=1.0)
        assert error[2:].max().item() < 1e-12, name
        assert error[:2].max().item() < 1e-9, name


def test_erf_expectations_against_a_fine_grid():
    """Erf products of up to four factors (tilting + the correlation integral) vs a 601-node grid.

    The trapezoid rule converges geometrically for these entire integrands; at 601 nodes and
    variances <= 2 * 1.6^2 its error is below 1e-14, so the tolerance 1e-12 bounds the
    correlation integral's (rho_B^(-2n) <= 1e-15 per pair, times the ~10 terms of a product).
    """
    act = nk.Erf(0.8, 1.6, -0.1)
    q, same = _random_pairs(40, seed=5)
    mine, grid = PairGaussian(act, q, same), _TensorGrid(act.fn, q, 601)
    for counts in [(4, 0, 0, 0), (3, 1, 0, 0), (2, 2, 0, 0), (1, 3, 0, 0), (2, 0, 1, 1), (1, 1, 2, 0),
                   (0, 0, 2, 2), (1, 0, 1, 0), (2, 1, 1, 0), (0, 1, 0, 0)]:
        factors = [(0, 0)] * counts[0] + [(1, 0)] * counts[1] + [(0, 1)] * counts[2] + [(1, 1)] * counts[3]
        torch.testing.assert_close(mine.expect(factors), grid.expect(factors), rtol=0, atol=1e-12)


def test_relu_expectations_fall_back_to_the_polar_grid():
    """Products outside the closed forms (an odd number of factors sigma) still come from the grid."""
    q, same = _random_pairs(10, seed=6)
    act = nk.ABReLU(-0.3, 1.2)
    mine, grid = PairGaussian(act, q, same), _PolarGrid(act, q)
    odd = (((0, 0), (1, 0), (1, 0)), ((0, 0), (0, 0), (1, 1), (0, 0), (1, 0)), ((0, 0), (1, 0), (0, 1), (1, 1)))
    for factors in odd:
        torch.testing.assert_close(mine.expect(factors), grid.expect(factors), rtol=1e-13, atol=1e-14)
