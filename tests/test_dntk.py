"""ntkit.finite_width's dNTK statistics P, Q (RYH §11.2) against the note and Monte Carlo.

Reference: ../shared/research/finite_width.md, §2.3 (dNTK, the closed form at L = 2), §4.2 table D.

Monte Carlo. Finite ntkit networks ``serial(Dense(n), act, ..., Dense(2))`` (NTK
parameterization: every parameter standard normal at learning rate 1, i.e. RYH's lambda = C)
are drawn M times; ``torch.func`` gives the whole dNTK tensor
:math:`\\widehat{d\\Theta}_{i_0i_1i_2;\\alpha_0\\alpha_1\\alpha_2}` as the derivative of the NTK
:math:`J J^\\top` along each gradient row of J (``jvp`` of ``jacrev``); ReLU's second derivative
is autograd's a.e. zero, the convention of :func:`dntk_statistics`. With two outputs,
``n dtheta[i0, i1, i1] z[i0]`` (i0 != i1) estimates P and ``n dtheta[i0, i0, i2] z[i2]``
(i0 != i2) estimates Q, for every quadruple of inputs.

Tolerances. Each entry's standard error is the sample sd over networks / sqrt(M). At L = 2 the
statistics are exact at any width (the first layer is Gaussian): 5 s.e. At L = 3 the estimate
at width n carries an O(1/n) relative bias c/n; X_{n/2} - X_n measures it, so we allow
5 s.e. + |X_{n/2} - X_n| (as tests/test_finite_width.py). With 32 entries per check a 5 s.e.
bound leaves a false-alarm rate ~ 32 * 6e-7. Every Monte Carlo check also rejects a perturbed
prediction with the same tolerance (negative control).
"""

import math

import pytest
import torch
from torch.func import functional_call, grad, jacrev, jvp, vmap

import ntkit as nk
from ntkit.finite_width import MLPSpec, read_mlp
from ntkit.finite_width._dntk import DNTKStatistics, _layer, dntk_statistics, expected_ntk_step
from ntkit.finite_width._expectations import PairGaussian
from ntkit.finite_width._gaussian_products import ProductGaussian
from ntkit.finite_width._recursions import pair_statistics

X2 = torch.tensor([[1.0, 0.5, -0.2], [-0.3, 1.2, 0.4]], dtype=torch.float64)
X_ONE = torch.ones(1, 4, dtype=torch.float64)


@pytest.fixture(autouse=True)
def one_thread():
    """Many small batched ops: on the shared 2-core box a second thread only contends (the Monte
    Carlo ran 7x slower with two threads under load). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(act, depth, c_w, c_b=0.0, lambda_w=1.0, lambda_b=0.0):
    return MLPSpec((act,) * (depth - 1), (c_w,) * depth, (c_b,) * depth, (lambda_w,) * depth, (lambda_b,) * depth)


def mlp(act, depth, n, outputs=2, c_w=1.5, c_b=0.1):
    layers = []
    for _ in range(depth - 1):
        layers += [nk.Dense(n, W_std=math.sqrt(c_w), b_std=math.sqrt(c_b)), act]
    return nk.serial(*layers, nk.Dense(outputs, W_std=math.sqrt(c_w), b_std=math.sqrt(c_b)))


def sample_dntk(net, x, n_networks, seed, targets=None, train=None, chunk=1000):
    """Per network: P and Q estimates (M, N, N, N, N) and n * (minus) the NTK's derivative along
    the gradient of 1/2 sum_{alpha in train} (z - targets)^2, i.e. n dTheta_{ii}/d(-eta) of one
    GD step on the inputs ``train`` (default all), at every pair of inputs (M, N, N)."""
    net(x)  # materialize the lazy Dense layers
    names, shapes = zip(*[(name, p.shape) for name, p in net.named_parameters()])
    denses = [layer for layer in net.layers if isinstance(layer, nk.Dense)]
    n, outs, count = denses[0].out_features, denses[-1].out_features, x.shape[0]
    targets = torch.zeros(count, outs, dtype=torch.float64) if targets is None else targets
    train = list(range(count)) if train is None else train

    def outputs(params):
        return functional_call(net, params, (x,))  # (N, n_L)

    def jacobian(params):  # rows (alpha, i), columns: every parameter
        jac = jacrev(outputs)(params)
        return torch.cat([jac[name].reshape(count * outs, -1) for name in names], 1)

    def ntk(params):
        j = jacobian(params)
        return j @ j.T

    def unflatten(row):
        sizes = [math.prod(s) for s in shapes]
        return {name: part.reshape(s) for name, part, s in zip(names, row.split(sizes), shapes)}

    def one(params):
        d = vmap(lambda row: jvp(ntk, (params,), (unflatten(row),))[1])(jacobian(params))
        loss_grad = grad(lambda p: 0.5 * ((outputs(p) - targets)[train] ** 2).sum())(params)
        step = jvp(ntk, (params,), (loss_grad,))[1]
        return d.reshape((count, outs) * 3), outputs(params), step.reshape(count, outs, count, outs)

    g = torch.Generator().manual_seed(seed)
    pairs = [(i, k) for i in range(outs) for k in range(outs) if i != k]
    ps, qs, steps = [], [], []
    for start in range(0, n_networks, chunk):
        b = min(chunk, n_networks - start)
        params = {name: torch.randn(b, *s, generator=g, dtype=torch.float64) for name, s in zip(names, shapes)}
        d, z, step = vmap(one)(params)  # d: (B, a0, i0, a1, i1, a2, i2); z: (B, a3, i3)
        ps.append(sum(torch.einsum("bxyw,bv->bxywv", d[:, :, i, :, k, :, k], z[:, :, i]) for i, k in pairs))
        qs.append(sum(torch.einsum("bxyw,bv->bxywv", d[:, :, i, :, i, :, k], z[:, :, k]) for i, k in pairs))
        steps.append(-sum(step[:, :, i, :, i] for i in range(outs)) / outs)
    return n * torch.cat(ps) / len(pairs), n * torch.cat(qs) / len(pairs), n * torch.cat(steps)


def mean_se(samples):
    return samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])


def within(estimate, prediction, tolerance):
    return bool(((estimate - prediction).abs() <= tolerance).all())


# -- deterministic: the note's numbers, symmetries, the quadrature -------------------------------


def test_table_d_one_hidden_layer():
    """tanh, C_W = 1.5, C_b = 0.1, lambda = 1, one input: P + 2Q = -3.643 (the note, table D)."""
    s = spec(nk.Tanh(), 2, 1.5, c_b=0.1, lambda_w=1.0, lambda_b=1.0)
    stats = dntk_statistics(s, X_ONE)
    assert (stats.p + 2 * stats.q).item() == pytest.approx(-3.643, abs=5.1e-4)  # the note's 4 digits
    assert expected_ntk_step(s, X_ONE, outputs=1).item() == pytest.approx(3.643, abs=5.1e-4)
    # ReLU at L = 2, one input: <s'^2 s^2> = K/2, so P = lambda_W C_W K Theta, Q = P/2 (closed form by hand)
    s = spec(nk.ReLU(), 2, 2.0, c_b=0.1, lambda_w=0.7, lambda_b=0.3)
    k, theta = 0.1 + 2.0, 0.3 + 0.7
    stats = dntk_statistics(s, X_ONE)
    assert stats.p.item() == pytest.approx(0.7 * 2.0 * k * theta, rel=1e-12)
    assert stats.q.item() == pytest.approx(0.7 * 2.0 * k * theta / 2, rel=1e-12)


def test_symmetry_duplicates_and_no_hidden_layer():
    """P_{0123} = P_{0213} (the NTK is symmetric); repeated inputs repeat entries; L = 1: no dNTK."""
    x = torch.cat([X2, X2[:1]])
    stats = dntk_statistics(spec(nk.Erf(), 3, 1.7, c_b=0.2, lambda_w=0.8, lambda_b=0.4), x)
    torch.testing.assert_close(stats.p, stats.p.transpose(1, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(stats.p[2, 2, 2, 2], stats.p[0, 0, 0, 0], rtol=0, atol=0)
    torch.testing.assert_close(stats.q[:2, :2, :2, :2], dntk_statistics(
        spec(nk.Erf(), 3, 1.7, c_b=0.2, lambda_w=0.8, lambda_b=0.4), X2).q, rtol=0, atol=0)
    # a near-duplicate input: numerically rank 1 for the pivoted Cholesky, continuous with the duplicate
    near = dntk_statistics(spec(nk.Tanh(), 3, 1.5, c_b=0.1), torch.cat([X2[:1], X2[:1] + 1e-7]))
    torch.testing.assert_close(near.p, near.p[0, 0, 0, 0].expand(2, 2, 2, 2), rtol=1e-5, atol=0)
    flat = dntk_statistics(nk.serial(nk.Dense(3, b_std=0.5)), X2)
    assert isinstance(flat, DNTKStatistics) and not flat.p.any() and not flat.q.any()


def test_ntk_tensors_match_table_a_and_the_pair_engine():
    """The B, F this module propagates: table A (ReLU, one input, L = 3: B = 22.5, F = 18) and the
    pair engine of ``_recursions`` (F for two inputs, tanh, L = 4)."""
    state = _run_layers(spec(nk.ReLU(), 3, 2.0, lambda_w=1.0, lambda_b=0.5), torch.ones(1, 1, dtype=torch.float64))
    assert state["B"].item() == pytest.approx(22.5, rel=1e-12)
    assert state["F"].item() == pytest.approx(18.0, rel=1e-12)
    s = spec(nk.Tanh(), 4, 1.5, c_b=0.1, lambda_w=0.8, lambda_b=0.3)
    state = _run_layers(s, torch.tensor([[1.0, 0.5], [0.5, 1.2]], dtype=torch.float64))
    pair = pair_statistics(s, torch.tensor([[1.0, 0.5, 1.2]], dtype=torch.float64), torch.tensor([False]))
    torch.testing.assert_close(state["F"], pair["F"][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(state["T"][0, 1], pair["T"][0, 1], rtol=1e-9, atol=0)


def _run_layers(s, q0, keep_lower=True):
    """All layers of ``_dntk._layer`` from the input products q0 (N, N); keep_lower=False drops
    the hidden layers' F, B, P, Q before each layer (the top layer's own terms only)."""
    state = {"K": s.c_b[0] + s.c_w[0] * q0, "T": s.lambda_b[0] + s.lambda_w[0] * q0}
    state.update({name: q0.new_zeros((q0.shape[0],) * 4) for name in "FBPQ"})
    for layer, act in enumerate(s.activations):
        if not keep_lower:
            state.update({name: torch.zeros_like(state[name]) for name in "FBPQ"})
        state = _layer(ProductGaussian(act, state["K"]), state, s.c_w[layer + 1], s.c_b[layer + 1],
                       s.lambda_w[layer + 1], s.lambda_b[layer + 1])
    return state


@pytest.mark.parametrize("a, b", [(0.0, 1.0), (0.2, 1.0), (-1.0, 1.0)], ids=["relu", "leaky", "abs"])
def test_relu_curvature_is_the_price_derivative(a, b):
    """<sigma_i sigma''_j> (sigma'' = (b - a) delta) in closed form = 2 dg_ij/dK_jj (Price's theorem,
    autograd of the arc-cosine kernel in ``_expectations``); 0 for the same sample."""
    k = torch.tensor([[1.3, -0.4], [-0.4, 0.8]], dtype=torch.float64)
    act = nk.ABReLU(a, b)
    gauss = ProductGaussian(act, k)
    pair = PairGaussian(act, torch.tensor([[1.3, -0.4, 0.8]], dtype=torch.float64), torch.tensor([False]))
    assert gauss.expect(((0, 0), (1, 2))) == pytest.approx(2 * pair.jac[0, 1, 2].item(), rel=1e-9)
    assert gauss.expect(((1, 0), (0, 2))) == pytest.approx(2 * pair.jac[0, 1, 0].item(), rel=1e-9)
    assert gauss.expect(((0, 0), (0, 2))) == 0.0


def test_four_point_rule_against_sampling():
    """The 4-sample trapezoidal rule vs 1e6 exact Gaussian draws (5 s.e.), tanh and its derivatives."""
    g = torch.Generator().manual_seed(3)
    root = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.6
    k = root @ root.T + 0.3 * torch.eye(4, dtype=torch.float64)
    gauss = ProductGaussian(nk.Tanh(), k)
    z = torch.randn(1_000_000, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(k).T
    t = torch.tanh(z)
    derivative = {0: t, 1: 1 - t**2, 2: -2 * t * (1 - t**2)}
    for orders in ((0, 1, 2, 1), (1, 0, 1, 0), (0, 0, 1, 1), (1, 2, 0, 1)):
        values = math.prod(derivative[o][:, s] for s, o in enumerate(orders))
        tolerance = 5 * values.std() / math.sqrt(z.shape[0])
        assert abs(values.mean() - gauss.expect(tuple(enumerate(orders)))) <= tolerance, orders
        # control: the orders on the samples in reverse (an axis mix-up of the grid)
        assert abs(values.mean() - gauss.expect(tuple(enumerate(orders[::-1])))) > tolerance, orders


# -- Monte Carlo over finite ntkit networks -----------------------------------------------------


@pytest.mark.parametrize("act, c_w", [(nk.Tanh(), 1.5), (nk.ReLU(), 2.0)], ids=["tanh", "relu"])
def test_one_hidden_layer_is_exact(act, c_w):
    """L = 2: P, Q and the mean NTK step are exact at any width (here n = 8)."""
    net = mlp(act, 2, 8, c_w=c_w)
    targets = torch.tensor([[0.5, -1.0], [0.3, 0.8]], dtype=torch.float64)
    p, q, step = sample_dntk(net, X2, 4000, seed=1, targets=targets)
    stats = dntk_statistics(net, X2)
    for estimate, prediction, wrong in ((p, stats.p, stats.q), (q, stats.q, stats.p)):
        mean, se = mean_se(estimate)
        assert within(mean, prediction, 5 * se)
        assert not within(mean, wrong, 5 * se)  # control: P and Q swapped (index placement)
        assert not within(mean, 1.15 * prediction, 5 * se)  # control: 15% off
    # one GD step: n E[dTheta_ii / d(-eta)] = -sum (n_L P + Q + Q^T), whatever the targets
    mean, se = mean_se(step)
    predicted = expected_ntk_step(net, X2)
    assert within(mean, predicted, 5 * se)
    assert not within(mean, -predicted, 5 * se)  # control: the sign of the step
    # trained on the first input only, the NTK moves at both
    mean, se = mean_se(sample_dntk(net, X2, 4000, seed=2, targets=targets, train=[0])[2])
    predicted = expected_ntk_step(net, X2[:1], X2)
    assert within(mean, predicted, 5 * se)
    assert not within(mean, expected_ntk_step(net, X2[1:], X2), 5 * se)  # control: the other input


@pytest.mark.parametrize("act, c_w", [(nk.Tanh(), 1.5), (nk.ReLU(), 2.0)], ids=["tanh", "relu"])
def test_two_hidden_layers(act, c_w):
    """L = 3: the recursion to leading order, within 5 s.e. + the measured 1/n bias (n = 16, 32).

    (ReLU's bias is large: +18% at n = 16, +9% at n = 32, +3% at n = 64 on P_0000 (M = 8000);
    the Richardson value 2 X_32 - X_16 = 15.79 +- 0.72 against 15.94.)
    """
    runs = {n: sample_dntk(mlp(act, 3, n, c_w=c_w), X2, 4000, seed=n)[:2] for n in (16, 32)}
    net = mlp(act, 3, 32, c_w=c_w)
    stats = dntk_statistics(net, X2)
    top = _top_layer_only(read_mlp(net, in_features=3), X2)
    for index, prediction in enumerate(stats):
        (coarse, _), (fine, se) = mean_se(runs[16][index]), mean_se(runs[32][index])
        tolerance = 5 * se + (coarse - fine).abs()
        assert within(fine, prediction, tolerance)
        # control: the top layer's own terms only (F, B, P, Q of the hidden layer dropped)
        assert not within(fine, top[index], tolerance)


def _top_layer_only(s, x):
    state = _run_layers(s, x @ x.T / x.shape[1], keep_lower=False)
    return state["P"], state["Q"]


# -- errors -------------------------------------------------------------------------------------


class _OnceDifferentiable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.tanh(z)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * (1 - torch.tanh(z) ** 2)


@pytest.mark.parametrize(
    "net, x, message",
    [
        (mlp(nk.ReLU(), 2, 8), torch.eye(3, dtype=torch.float64), "at most 2 distinct inputs (got 3)"),
        (nk.serial(nk.Dense(8), nk.LayerNorm(), nk.Dense(1)), X2, "serial[1] (LayerNorm): expected an activation"),
        (nk.serial(nk.Dense(8), nk.ReLU(), nk.Dense(4), nk.ReLU(), nk.Dense(1)), X2, "hidden widths [8, 4] differ"),
        (nk.serial(nk.Dense(1), nk.Tanh(), nk.Dense(1)), X2, "hidden width must be an integer >= 2"),
        (mlp(nk.Elementwise(torch.abs), 2, 8), X2, "sigma^(2) vanishes at every quadrature node"),
        (mlp(nk.Elementwise(_OnceDifferentiable.apply), 2, 8), X2, "autograd cannot give derivative 2"),
        (mlp(nk.Tanh(), 2, 8), torch.zeros(1, 3), None),  # no bias in layer 1 needed: mlp has one
        (nk.serial(nk.Dense(8), nk.Tanh(), nk.Dense(1)), torch.zeros(1, 3), "zero first-layer variance"),
    ],
)
def test_errors(net, x, message):
    if message is None:  # the control: a supported network and input go through
        assert dntk_statistics(net, x).p.shape == (1, 1, 1, 1)
        return
    with pytest.raises(nk.NtkitError) as error:
        dntk_statistics(net, x)
    assert message in str(error.value)


def test_bad_width_and_outputs():
    net = mlp(nk.Tanh(), 2, 8)
    for width in (1, 0, 2.5, True):
        with pytest.raises(nk.NtkitError, match="width must be an integer >= 2"):
            dntk_statistics(net, X2, width=width)
    with pytest.raises(nk.NtkitError, match="pass outputs="):
        expected_ntk_step(spec(nk.Tanh(), 2, 1.5), X2)
    with pytest.raises(nk.NtkitError, match="outputs must be a positive integer"):
        expected_ntk_step(net, X2, outputs=0)
    with pytest.raises(nk.NtkitError, match="x_train has 3 features but x has 2"):
        expected_ntk_step(net, X2, X2[:, :2])
