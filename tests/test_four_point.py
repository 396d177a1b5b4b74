"""ntkit.finite_width.four_point: V, A, B, D, F for N inputs, against the pair engine, the note and Monte Carlo.

Reference: ../shared/research/finite_width.md (§2.1-2.2 recursions, tables A, B, G of §4.2).

Monte Carlo. V, A, D come from the library's exact collective sampler (``sample_kernels``:
V = n Cov(G, G), A = n Cov(H, H), D = n Cov(G, H)); B and F from dense networks, averaged
over the readout analytically (``_dense_b_f``). A covariance over M networks has standard
error sd(centred products) / sqrt(M). At L = 2 every statistic is exact at any width (layer 1
is Gaussian), so the tolerance is 5 s.e.; deeper, the O(1/n^2) bias is allowed for as in
test_finite_width.py: |X_n - X| <= 5 s.e. + |X_{n/2} - X_n|. Every Monte Carlo check also
rejects a perturbed prediction (the same network with C_W 10% higher) with the same tolerance.
"""

import math

import pytest
import torch

import ntkit as nk
from ntkit.finite_width import MLPSpec, four_point, four_point_subset, sample_kernels
from ntkit.finite_width._recursions import pair_statistics

SQRT2 = math.sqrt(2.0)
#: The note's two inputs: x.x/d = 1, 1 and 0.5 (d = 2).
X_PAIR = torch.tensor([[SQRT2, 0.0], [SQRT2 / 2, math.sqrt(1.5)]], dtype=torch.float64)
X_ONE = torch.ones(1, 4, dtype=torch.float64)
#: Four inputs with x.x/d in [0.5, 1.5]: entries over 3 and 4 distinct inputs.
X_FOUR = torch.tensor([[1.2, 0.3, -0.4], [0.2, 1.1, 0.5], [-0.6, 0.4, 1.0], [0.9, -0.8, 0.3]], dtype=torch.float64)


def spec(act, depth, c_w, c_b=0.0, lambda_w=1.0, lambda_b=0.0):
    return MLPSpec((act,) * (depth - 1), (c_w,) * depth, (c_b,) * depth, (lambda_w,) * depth, (lambda_b,) * depth)


# -- the pair engine and the note's numbers (deterministic) ------------------------------------


@pytest.mark.parametrize("act", [nk.ReLU(), nk.Tanh(), nk.Erf()])
def test_pair_slices_equal_pair_statistics(act):
    """Sample-set closure: the (a, b) slices of the N-input V, D, F are the pair engine's, to round-off."""
    s = spec(act, 3, 1.4, c_b=0.2, lambda_w=0.9, lambda_b=0.3)
    x = X_FOUR * 0.8
    stats = four_point(s, x)
    rows, cols = torch.triu_indices(4, 4, 1)
    q = x @ x.T / x.shape[1]
    pairs = pair_statistics(s, torch.stack([q[rows, rows], q[rows, cols], q[cols, cols]], 1), rows == cols)
    for p, (a, b) in enumerate(zip(rows.tolist(), cols.tolist())):
        slots = [(a, a), (a, b), (b, b)]
        for name in ("V", "D"):
            mine = torch.stack([torch.stack([getattr(stats, name)[i, j, k, l] for k, l in slots]) for i, j in slots])
            # round-off of O(10) products; the 2-D rule is shared (same nodes), so no quadrature error
            torch.testing.assert_close(mine, pairs[name][p], rtol=1e-12, atol=1e-14)
        both = torch.tensor([a, b])
        mine = stats.F[both][:, both][:, :, both][:, :, :, both]
        torch.testing.assert_close(mine, pairs["F"][p], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(stats.nngp[rows, cols], pairs["K"][:, 1], rtol=1e-13, atol=0)
    torch.testing.assert_close(stats.ntk[rows, cols], pairs["T"][:, 1], rtol=1e-13, atol=0)


def test_note_table_a_relu_single_input():
    """Table A (ReLU, C_W = 2, lambda_W = 1, lambda_b = 0.5, L = 3): exact rationals."""
    s = four_point(spec(nk.ReLU(), 3, 2.0, lambda_b=0.5), X_ONE)
    expected = {"V": 40.0, "A": 48.25, "B": 22.5, "D": 39.0, "F": 18.0}
    for name, value in expected.items():
        assert getattr(s, name).item() == pytest.approx(value, rel=1e-13), name


def test_relu_single_input_recursions():
    """The note's ReLU one-input recursions (C_W = 2, C_b = 0; K, Theta constant-coefficient), L = 5."""
    l_w, l_b, q = 0.7, 0.4, 1.3
    x = torch.full((1, 3), math.sqrt(q), dtype=torch.float64)
    s = four_point(spec(nk.ReLU(), 5, 2.0, lambda_w=l_w, lambda_b=l_b), x)
    k, theta = 2.0 * q, l_b + l_w * q
    v = a = b = d = f = 0.0
    for _ in range(4):  # the note §2.2, "ReLU, one input, C_W = 2"
        a = 1.25 * l_w**2 * k**2 + l_w * k * theta + theta**2 + 0.25 * l_w**2 * v + l_w * d + a
        d = 2.5 * l_w * k**2 + k * theta + 0.5 * l_w * v + d
        b, f, v = 2 * theta**2 + b, 2 * k * theta + f, 5 * k**2 + v
        theta = l_b + l_w * k / 2 + theta
    for name, value in {"V": v, "A": a, "B": b, "D": d, "F": f}.items():
        assert getattr(s, name).item() == pytest.approx(value, rel=1e-13), name
    assert s.ntk.item() == pytest.approx(theta, rel=1e-14)


def test_note_tables_b_and_g_tanh():
    """Tables B and G (tanh): theory values as printed (4th / 3rd decimal)."""
    one = four_point(spec(nk.Tanh(), 4, 1.0), X_ONE)
    for name, value in {"V": 0.0501, "A": 0.0052, "B": 0.6328, "D": -0.0088, "F": 0.0798}.items():
        assert getattr(one, name).item() == pytest.approx(value, abs=5.1e-5), name
    two = four_point(spec(nk.Tanh(), 4, 1.0), X_PAIR)
    expected = {
        two.A[0, 1, 0, 1]: 0.261, two.A[0, 0, 1, 1]: 0.000, two.B[0, 1, 0, 1]: 0.524, two.F[0, 1, 0, 1]: 0.170,
        two.B[0, 1, 1, 1]: 0.241, two.F[0, 1, 1, 1]: 0.033, two.D[0, 1, 0, 1]: 0.116, two.D[0, 0, 0, 1]: 0.020,
    }
    for got, value in expected.items():
        assert got.item() == pytest.approx(value, abs=5.1e-4)
    g = four_point(spec(nk.Tanh(), 3, 1.5, c_b=0.1, lambda_w=1.0, lambda_b=0.5), X_PAIR)
    expected = {
        g.A[0, 1, 0, 1]: 0.560, g.A[0, 0, 0, 1]: 0.200, g.B[0, 1, 0, 1]: 2.449, g.B[0, 0, 1, 1]: 1.056,
        g.B[0, 1, 1, 0]: 1.003, g.F[0, 0, 1, 1]: 0.071, g.F[0, 1, 1, 0]: 0.039, g.D[0, 1, 0, 0]: -0.234,
    }
    for got, value in expected.items():
        assert got.item() == pytest.approx(value, abs=5.1e-4)


# -- layout, symmetries, duplicates, the subset form ---------------------------------------------


def test_symmetries_duplicates_and_subset():
    s = spec(nk.ReLU(), 4, 2.0, c_b=0.1, lambda_w=1.0, lambda_b=0.3)
    x = torch.cat([X_FOUR, X_FOUR[1:2]])  # input 4 duplicates input 1
    stats = four_point(s, x)
    for name in ("V", "A"):
        t = getattr(stats, name)
        torch.testing.assert_close(t, t.permute(1, 0, 2, 3), rtol=0, atol=0)
        torch.testing.assert_close(t, t.permute(2, 3, 0, 1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.D, stats.D.permute(1, 0, 3, 2), rtol=0, atol=0)
    torch.testing.assert_close(stats.B, stats.B.permute(1, 0, 3, 2), rtol=1e-12, atol=1e-12)  # B_abcd = B_badc
    torch.testing.assert_close(stats.B, stats.B.permute(2, 3, 0, 1), rtol=1e-12, atol=1e-12)  # = B_cdab
    torch.testing.assert_close(stats.F, stats.F.permute(2, 3, 0, 1), rtol=1e-12, atol=1e-12)  # F_abcd = F_cdab
    for t in stats[2:]:
        torch.testing.assert_close(t[4], t[1], rtol=0, atol=0)  # the duplicate is the same input
    # subset: exactly the slices over <= 2 distinct inputs; over 3-4 two quasi-Monte Carlo
    # estimates (different point sets), each within the docstring's measured 2e-3 (ReLU)
    chosen = [3, 0, 2, 3]
    sub = four_point_subset(s, x, chosen, quadrature_points=1 << 14)
    i = torch.tensor(chosen)
    index = (i[:, None, None, None], i[None, :, None, None], i[None, None, :, None], i[None, None, None, :])
    distinct = torch.stack(torch.broadcast_tensors(*index)).reshape(4, -1).T.tolist()
    few = torch.tensor([len(set(row)) <= 2 for row in distinct]).reshape(4, 4, 4, 4)
    for name in ("V", "A", "B", "D", "F"):
        full, small = getattr(stats, name)[index], getattr(sub, name)
        torch.testing.assert_close(small[few], full[few], rtol=1e-13, atol=1e-13)
        assert float((small - full).abs().max()) <= 5e-3 * float(full.abs().max()), name
    torch.testing.assert_close(sub.nngp, stats.nngp[i[:, None], i[None, :]], rtol=0, atol=0)


def test_errors_memory_subset_and_architecture():
    with pytest.raises(nk.NtkitError, match=r"needs about [0-9.]+ GiB .* max_memory = 0\.0 GiB"):
        four_point(spec(nk.ReLU(), 3, 2.0), X_FOUR, max_memory=1 << 20)
    big = torch.randn(120, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    message = r"N = 120 inputs \(120 distinct\) needs about [0-9.]+ GiB \(it grows like N\^4\)"
    with pytest.raises(nk.NtkitError, match=message):
        four_point(spec(nk.ReLU(), 3, 2.0), big)
    with pytest.raises(nk.NtkitError, match="1 to 4 indices, got 5"):
        four_point_subset(spec(nk.ReLU(), 3, 2.0), X_FOUR, [0, 1, 2, 3, 0])
    with pytest.raises(nk.NtkitError, match="out of range"):
        four_point_subset(spec(nk.ReLU(), 3, 2.0), X_FOUR, [0, 7])
    with pytest.raises(nk.NtkitError, match=r"serial\[1\] \(LayerNorm\): expected an activation here"):
        four_point(nk.serial(nk.Dense(8), nk.LayerNorm(), nk.Dense(1)), X_FOUR)
    with pytest.raises(nk.NtkitError, match="zero first-layer variance"):
        four_point(spec(nk.Tanh(), 3, 1.0), torch.zeros(2, 3))
    with pytest.raises(nk.NtkitError, match="quadrature_points must be an integer >= 2"):
        four_point(spec(nk.Tanh(), 3, 1.0), X_FOUR, quadrature_points=0)
    # a supported network (standard parameterization: lambda_W = the fan-in) goes through
    net = nk.serial(nk.Dense(16, parameterization="standard"), nk.ReLU(), nk.Dense(1, parameterization="standard"))
    out = four_point(net, X_PAIR)
    assert out.V.shape == (2, 2, 2, 2) and out.nngp.shape == (2, 2)


# -- Monte Carlo -----------------------------------------------------------------------------------


def _dense_b_f(s, x, n, m, seed, chunk=500):
    """Per-network estimates of B and F, (M, N, N, N, N) each, from dense width-n networks.

    The NTK forward equation (RYH §8.0) gives the neuron-resolved NTK of the last hidden layer,
    Theta_{l+1; ac} = (lambda_b + lambda_W s_a.s_c / n) I + W (s'_a Theta_{l; ac} s'_c) W^T. Given
    the hidden layers, the readout is Gaussian, so (p != q outputs) n E[Theta_pq;ac Theta_pq;bd] and
    n E[z_p;a z_q;c Theta_pq;bd] are, exactly,
    (C_W^2 / n) sum_{jk} s'_ja s'_jb s'_kc s'_kd Theta_jk;ac Theta_jk;bd and
    (C_W^2 / n) sum_{jk} s_ja s'_jb s_kc s'_kd Theta_jk;bd (Rao-Blackwellized over the readout).
    """
    g = torch.Generator().manual_seed(seed)
    count, d = x.shape
    q = x @ x.T / d
    bs, fs = [], []
    for start in range(0, m, chunk):
        b = min(chunk, m - start)
        eye = torch.eye(n, dtype=torch.float64)
        theta = (s.lambda_b[0] + s.lambda_w[0] * q)[None, :, :, None, None] * eye  # (b, N, N, n, n)
        w = torch.randn(b, n, d, generator=g, dtype=torch.float64) * math.sqrt(s.c_w[0] / d)
        z = w @ x.T + torch.randn(b, n, 1, generator=g, dtype=torch.float64) * math.sqrt(s.c_b[0])
        for layer, act in enumerate(s.activations):
            post, slope = _value_slope(act, z)
            if layer + 1 == len(s.activations):
                break
            w = torch.randn(b, n, n, generator=g, dtype=torch.float64) * math.sqrt(s.c_w[layer + 1] / n)
            per_input = slope.transpose(1, 2)  # (b, N, n)
            inner = per_input[:, :, None, :, None] * theta * per_input[:, None, :, None, :]
            gram = post.transpose(1, 2) @ post / n
            theta = (s.lambda_b[layer + 1] + s.lambda_w[layer + 1] * gram)[..., None, None] * eye
            theta = theta + w[:, None, None] @ inner @ w[:, None, None].transpose(-1, -2)
            z = w @ post + torch.randn(b, n, 1, generator=g, dtype=torch.float64) * math.sqrt(s.c_b[layer + 1])
        u = (slope[:, :, :, None] * slope[:, :, None, :]).permute(0, 2, 3, 1)  # (b, N, N, n): s'_a s'_b
        v = (post[:, :, :, None] * slope[:, :, None, :]).permute(0, 2, 3, 1)  # s_a s'_b
        pair = theta[:, :, None, :, None] * theta[:, None, :, None, :]  # [a, b, c, d, j, k]: T_ac T_bd
        right = (pair @ u[:, None, None, :, :, :, None])[..., 0]  # sum_k T_ac T_bd u_cd[k]: [a, b, c, d, j]
        scale = s.c_w[-1] ** 2 / n
        bs.append(scale * (right * u[:, :, :, None, None, :]).sum(-1))

        right = torch.einsum("mcdk,mbdjk->mbcdj", v, theta)  # sum_k v_cd[k] T_bd[j, k]
        fs.append(scale * torch.einsum("mabj,mbcdj->mabcd", v, right))
    return torch.cat(bs), torch.cat(fs)


def _value_slope(act, z):
    zz = z.detach().requires_grad_(True)
    with torch.enable_grad():
        (slope,) = torch.autograd.grad(act.fn(zz).sum(), zz)
    return act.fn(z), slope


def _covariances(samples, other, n):
    """n Cov over networks of every entry pair, with its standard error: (N, N, N, N) each."""
    a = samples - samples.mean(0)
    b = other - other.mean(0)
    products = a[:, :, :, None, None] * b[:, None, None, :, :]
    return n * products.mean(0), n * products.std(0) / math.sqrt(samples.shape[0])


def _mean(samples):
    return samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])


def _estimates(s, x, n, m, m_dense, seed):
    """(estimate, s.e.) of V, A, D (collective sampler, m networks) and B, F (m_dense dense ones) at width n."""
    kernels = sample_kernels(s, x, n_networks=m, width=n, seed=seed)
    b, f = _dense_b_f(s, x, n, m_dense, seed + 1)
    return {
        "V": _covariances(kernels.nngp, kernels.nngp, n), "A": _covariances(kernels.ntk, kernels.ntk, n),
        "D": _covariances(kernels.nngp, kernels.ntk, n), "B": _mean(b), "F": _mean(f),
    }


def _check(estimates, theory, wrong, allowance=None):
    """Every entry within 5 s.e. (+ the bias allowance); the perturbed prediction is rejected."""
    for name, (estimate, se) in estimates.items():
        tolerance = 5 * se + (0.0 if allowance is None else allowance[name])
        prediction, control = getattr(theory, name), getattr(wrong, name)
        assert bool(((estimate - prediction).abs() <= tolerance).all()), (name, estimate, prediction, tolerance)
        assert not bool(((estimate - control).abs() <= tolerance).all()), ("control", name)


@pytest.mark.parametrize("act, c_w", [(nk.ReLU(), 2.0), (nk.Tanh(), 1.5)])
def test_layer_two_exact_four_inputs(act, c_w):
    """L = 2 is exact at any width: all entries, including those over 3 and 4 distinct inputs."""
    s = spec(act, 2, c_w, c_b=0.1, lambda_w=1.0, lambda_b=0.5)
    wrong = spec(act, 2, 1.1 * c_w, c_b=0.1, lambda_w=1.0, lambda_b=0.5)
    # dense B, F: per-network relative sd ~ 1/sqrt(n), so 5 s.e. ~ 3% at 5 000 networks, well
    # inside the control's ~20% shift; V, A, D: s.e. ~ 1-2% at 20 000 (note §4.3)
    estimates = _estimates(s, X_FOUR, 8, 20_000, 5_000, seed=3)
    _check(estimates, four_point(s, X_FOUR), four_point(wrong, X_FOUR))


def _deeper(s, wrong, x, widths, m, m_dense, seed):
    """Estimates at widths (n/2, n): check at n with the allowance |X_{n/2} - X_n| (the O(1/n^2) bias)."""
    coarse, fine = (_estimates(s, x, n, m, m_dense, seed + n) for n in widths)
    allowance = {name: (coarse[name][0] - fine[name][0]).abs() for name in fine}
    _check(fine, four_point(s, x), four_point(wrong, x), allowance)


def test_table_a_relu_single_input_monte_carlo():
    """Table A's network (ReLU, C_W = 2, lambda_b = 0.5, L = 3): V, A, B, D, F = 40, 48.25, 22.5, 39, 18."""
    s = spec(nk.ReLU(), 3, 2.0, lambda_w=1.0, lambda_b=0.5)
    wrong = spec(nk.ReLU(), 3, 2.2, lambda_w=1.0, lambda_b=0.5)
    _deeper(s, wrong, X_ONE, (16, 32), 16_000, 6_000, seed=40)


def test_tanh_two_inputs_monte_carlo():
    """Table G's second network (tanh, C_W = 1.5, C_b = 0.1, lambda_b = 0.5, L = 3), two inputs."""
    s = spec(nk.Tanh(), 3, 1.5, c_b=0.1, lambda_w=1.0, lambda_b=0.5)
    wrong = spec(nk.Tanh(), 3, 1.65, c_b=0.1, lambda_w=1.0, lambda_b=0.5)
    _deeper(s, wrong, X_PAIR, (16, 32), 16_000, 6_000, seed=50)


def test_relu_off_criticality_depth_four_monte_carlo():
    """Another depth and C_W: ReLU, C_W = 1.6, C_b = 0.2, lambda_W = 0.8, L = 4, two inputs."""
    s = spec(nk.ReLU(), 4, 1.6, c_b=0.2, lambda_w=0.8, lambda_b=0.3)
    wrong = spec(nk.ReLU(), 4, 1.76, c_b=0.2, lambda_w=0.8, lambda_b=0.3)
    _deeper(s, wrong, X_PAIR, (16, 32), 10_000, 3_000, seed=60)
