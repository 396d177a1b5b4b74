"""Properties every kernel must have, checked with hypothesis on small random inputs.

(a) positive homogeneity of bias-free networks of homogeneous activations;
(b) permutation equivariance; (c) symmetry K(x1, x2) = K(x2, x1)^T;
(d) blocked evaluation equals single-block evaluation;
(e) closed forms of linear networks (NTK parameterization);
(f) closed forms of the standard parameterization.

Tolerances (all float64, eps = 2**-52), per entry, relative to the Cauchy-Schwarz scale
sqrt(K(x_i, x_i) K(x'_j, x'_j)) of the kernel compared (every entry of a PSD kernel is bounded by
it, and rounding errors of the duals are relative to the norm product they are scaled by):

* ROUNDING = 4 (L + 2) eps: about 8 roundings of relative size eps/2 per layer and entry (Dense:
  a multiply and an add for each of NNGP and NTK; a dual: a handful of operations), added over
  the L hidden layers, the readout, and the scaling or permuting of the inputs.
* The correlation c of two pre-activations is computed with an absolute error
  dc <= (d + 4 (L + 2)) eps (d-term dot products: Higham, "Accuracy and Stability of Numerical
  Algorithms", eq. 3.5; then the same roundings). Two evaluations of one entry that differ in
  their rounding (scaled inputs, another order of the arguments, another block shape in the
  matrix product) can therefore see two correlations dc apart. A dual that is a smooth function
  of c turns that into an O(dc) change; a dual linear in theta = arccos(c) (the derivative term
  of ReLU, LeakyReLU, ABReLU, Abs, and the step RectifiedMonomial(1)'s; Sign's and
  RectifiedMonomial(0)'s NNGP) into up to arccos(1 - dc) ~ sqrt(2 dc), the modulus of
  continuity of arccos, attained at |c| = 1 (parallel inputs, which hypothesis generates
  readily). Their slopes relative to the kernel's scale are <= 1 (e.g. ReLU's Kdot
  (pi - theta) / (2 pi) against Kdot(0) = 1/2: 1/pi), so each such "singular" layer adds
  arccos(1 - dc) to the relative tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ntkit as nk

EPS = torch.finfo(torch.float64).eps
FIELDS = ("nngp", "ntk")
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Elementwise's stated accuracy (its docstring: < 1e-10 relative for tanh, sigmoid, softplus at
# input variances <= 4; the networks below keep variances <= 0.9**2 * 4 + 0.1**2 < 4). The
# quadrature rule is not symmetric in its two arguments, so swapping or re-ordering inputs can
# change an entry by that much.
QUADRATURE = 1e-10


def tolerance(layers: int, features: int, singular: int, extra_rounding: int = 0, accuracy: float = 0.0) -> float:
    """Relative tolerance of one entry, following the error model in the module docstring."""
    dc = (features + 4 * (layers + 2)) * EPS
    return 4 * (layers + 2 + extra_rounding) * EPS + singular * math.acos(1 - dc) + accuracy


def cauchy_schwarz_scale(net: nk.Layer, x1: torch.Tensor, x2: torch.Tensor, field: str) -> torch.Tensor:
    """sqrt(K(x1_i, x1_i) K(x2_j, x2_j)) from the kernels' own diagonals."""
    d1 = getattr(net.kernel(x1), field).diagonal()
    d2 = getattr(net.kernel(x2), field).diagonal()
    return torch.outer(d1, d2).clamp(min=0).sqrt()


def assert_close(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor, rtol: float, what: str) -> None:
    excess = (got - want).abs() - rtol * scale
    worst = float(excess.max())
    assert worst <= 0, f"{what}: exceeds the tolerance by {worst:.3g} (rtol {rtol:.3g})"


# -- strategies ---------------------------------------------------------------------------------

# Entries in [-2, 2], and exactly 0 below 1e-3 (no subnormal or tiny norms, whose squares would
# underflow to a spurious "zero input"); hypothesis readily produces zeros, repeats and
# parallel rows, the cases where kernels are most fragile.
_entries = st.floats(-2.0, 2.0, allow_nan=False, allow_subnormal=False).map(lambda v: 0.0 if abs(v) < 1e-3 else v)


def _batch(draw, n: int, d: int) -> torch.Tensor:
    return torch.from_numpy(draw(arrays(np.float64, (n, d), elements=_entries)))


@st.composite
def two_batches(draw, max_rows: int = 8, min_rows: int = 1):
    d = draw(st.integers(1, 6))
    n1, n2 = draw(st.integers(min_rows, max_rows)), draw(st.integers(min_rows, max_rows))
    return _batch(draw, n1, d), _batch(draw, n2, d)


# -- (a) positive homogeneity -------------------------------------------------------------------

HOMOGENEOUS = {  # degree-1 positively homogeneous: phi(a u) = a phi(u) for a > 0
    "ReLU": nk.ReLU,
    "LeakyReLU": lambda: nk.LeakyReLU(0.2),
    "ABReLU": lambda: nk.ABReLU(-0.7, 1.3),
    "Abs": nk.Abs,
}
_scales = st.floats(0.1, 10.0)


@pytest.mark.parametrize("name", list(HOMOGENEOUS))
@pytest.mark.parametrize("depth", [1, 2, 3])
@SETTINGS
@given(batches=two_batches(), alpha=_scales, beta=_scales, W_std=st.floats(0.5, 2.0))
def test_homogeneity_of_bias_free_networks(name, depth, batches, alpha, beta, W_std):
    # With no bias every pre-activation of alpha x is alpha times that of x, and phi is
    # homogeneous of degree 1, so every layer's outputs scale by alpha: K(alpha x1, beta x2) =
    # alpha beta K(x1, x2). The NTK sums products of such outputs and of derivatives phi'
    # (homogeneous of degree 0), one pair of each side per term: also alpha beta.
    x1, x2 = batches
    layers = []
    for _ in range(depth):
        layers += [nk.Dense(8, W_std=W_std), HOMOGENEOUS[name]()]
    net = nk.serial(*layers, nk.Dense(1, W_std=W_std))
    scaled, plain = net.kernel(alpha * x1, beta * x2), net.kernel(x1, x2)
    for field, singular in zip(FIELDS, (0, depth)):  # Kdot is linear in theta at every layer
        scale = cauchy_schwarz_scale(net, x1, x2, field) * (alpha * beta)
        rtol = tolerance(depth, x1.shape[1], singular)
        assert_close(getattr(scaled, field), alpha * beta * getattr(plain, field), scale, rtol, field)


def _one_hidden_layer(activation: nk.Layer, W_std: float = 1.2) -> nk.Serial:
    return nk.serial(nk.Dense(8, W_std=W_std), activation, nk.Dense(1, W_std=1.1))


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@SETTINGS
@given(batches=two_batches(), alpha=_scales, beta=_scales, negative=st.tuples(st.booleans(), st.booleans()))
def test_homogeneity_of_monomials(degree, batches, alpha, beta, negative):
    # phi(u) = u^q: phi(a u) = a^q phi(u) for every real a, so one hidden layer gives
    # K(a x1, b x2) = (a b)^q K(x1, x2); the NTK's terms are phi(u) phi(v) and
    # K_in(x1, x2) phi'(u) phi'(v), both of degree q in each argument.
    x1, x2 = batches
    a = -alpha if negative[0] else alpha
    b = -beta if negative[1] else beta
    net = _one_hidden_layer(nk.Monomial(degree))
    factor = (a * b) ** degree
    scaled, plain = net.kernel(a * x1, b * x2), net.kernel(x1, x2)
    for field in FIELDS:
        scale = cauchy_schwarz_scale(net, x1, x2, field) * abs(factor)
        rtol = tolerance(1, x1.shape[1], 0, extra_rounding=2 * degree)  # Horner and powers: 2 per degree
        assert_close(getattr(scaled, field), factor * getattr(plain, field), scale, rtol, field)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@SETTINGS
@given(batches=two_batches(), alpha=_scales, beta=_scales)
def test_homogeneity_of_rectified_monomials(degree, batches, alpha, beta):
    # phi(u) = max(u, 0)^q: phi(a u) = a^q phi(u) for a > 0 only; degree q in each argument.
    x1, x2 = batches
    net = _one_hidden_layer(nk.RectifiedMonomial(degree))
    factor = (alpha * beta) ** degree
    scaled, plain = net.kernel(alpha * x1, beta * x2), net.kernel(x1, x2)
    # The step (q = 0) has an NNGP linear in theta, ReLU (q = 1) a derivative term.
    singular = {"nngp": int(degree == 0), "ntk": int(degree <= 1)}
    for field in FIELDS:
        scale = cauchy_schwarz_scale(net, x1, x2, field) * factor
        rtol = tolerance(1, x1.shape[1], singular[field], extra_rounding=2 * degree)
        assert_close(getattr(scaled, field), factor * getattr(plain, field), scale, rtol, field)


@SETTINGS
@given(batches=two_batches(), alpha=_scales, beta=_scales)
def test_sign_is_homogeneous_of_degree_zero(batches, alpha, beta):
    x1, x2 = batches
    net = _one_hidden_layer(nk.Sign())
    scaled, plain = net.kernel(alpha * x1, beta * x2), net.kernel(x1, x2)
    for field in FIELDS:  # Sign's NNGP (2/pi) arcsin(c) is singular; its NTK is the readout's NNGP
        scale = cauchy_schwarz_scale(net, x1, x2, field)
        assert_close(getattr(scaled, field), getattr(plain, field), scale, tolerance(1, x1.shape[1], 1), field)


def test_homogeneity_check_can_fail():
    # Negative control: with a bias, ReLU nets are not homogeneous, and the check above sees it.
    x = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=torch.float64)
    net = nk.serial(nk.Dense(8, b_std=0.1), nk.ReLU(), nk.Dense(1))
    scaled, plain = net.kernel(2 * x), net.kernel(x)
    with pytest.raises(AssertionError):
        assert_close(scaled.nngp, 4 * plain.nngp, cauchy_schwarz_scale(net, x, x, "nngp") * 4, tolerance(1, 2, 0), "nngp")


# -- (b) permutation equivariance and (c) symmetry ----------------------------------------------

# Every activation, as (factory, singular layers for NNGP, for NTK, stated accuracy).
ACTIVATIONS: dict[str, tuple[Callable[[], nk.Layer], int, int, float]] = {
    "ReLU": (nk.ReLU, 0, 1, 0.0),
    "LeakyReLU": (lambda: nk.LeakyReLU(0.2), 0, 1, 0.0),
    "ABReLU": (lambda: nk.ABReLU(-0.4, 1.3), 0, 1, 0.0),
    "Abs": (nk.Abs, 0, 1, 0.0),
    "Sign": (nk.Sign, 1, 1, 0.0),
    "Erf": (lambda: nk.Erf(1.2, 0.8, 0.1), 0, 0, 0.0),
    "GELU": (nk.GELU, 0, 0, 0.0),
    "Sin": (lambda: nk.Sin(1.1, 0.9, 0.3), 0, 0, 0.0),
    "Cos": (lambda: nk.Cos(0.9, 1.2, -0.4), 0, 0, 0.0),
    "Rbf": (lambda: nk.Rbf(0.6), 0, 0, 0.0),
    "Exp": (lambda: nk.Exp(0.6, 0.5), 0, 0, 0.0),
    "Gaussian": (lambda: nk.Gaussian(1.2, -0.7), 0, 0, 0.0),
    "Monomial": (lambda: nk.Monomial(3), 0, 0, 0.0),
    "RectifiedMonomial(0)": (lambda: nk.RectifiedMonomial(0), 1, 1, 0.0),
    "RectifiedMonomial(2)": (lambda: nk.RectifiedMonomial(2), 0, 0, 0.0),
    "Polynomial": (lambda: nk.Polynomial([0.1, -0.5, 0.3, 0.2]), 0, 0, 0.0),
    "Hermite": (lambda: nk.Hermite(3), 0, 0, 0.0),
    "Tanh": (nk.Tanh, 0, 0, QUADRATURE),
    "Sigmoid": (nk.Sigmoid, 0, 0, QUADRATURE),
    "Softplus": (nk.Softplus, 0, 0, QUADRATURE),
    "Elementwise(sin)": (lambda: nk.Elementwise(torch.sin), 0, 0, QUADRATURE),
}


def _activation_net(name: str) -> nk.Serial:
    return nk.serial(nk.Dense(8, W_std=0.9, b_std=0.1), ACTIVATIONS[name][0](), nk.Dense(1, W_std=1.1, b_std=0.1))


def _rtol(name: str, field: str, features: int) -> float:
    _, singular_nngp, singular_ntk, accuracy = ACTIVATIONS[name]
    singular = singular_nngp if field == "nngp" else singular_ntk
    return tolerance(1, features, singular, extra_rounding=3, accuracy=accuracy)  # polynomials: ~2 per degree


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@SETTINGS
@given(batches=two_batches(), data=st.data())
def test_permutation_equivariance(name, batches, data):
    x1, x2 = batches
    p1 = torch.tensor(data.draw(st.permutations(range(len(x1)))), dtype=torch.long)
    p2 = torch.tensor(data.draw(st.permutations(range(len(x2)))), dtype=torch.long)
    net = _activation_net(name)
    d = x1.shape[1]
    cross, permuted = net.kernel(x1, x2), net.kernel(x1[p1], x2[p2])
    same, permuted_same = net.kernel(x1), net.kernel(x1[p1])
    for field in FIELDS:
        rtol = _rtol(name, field, d)
        scale = cauchy_schwarz_scale(net, x1, x2, field)
        assert_close(getattr(permuted, field), getattr(cross, field)[p1][:, p2], scale[p1][:, p2], rtol, field)
        scale = cauchy_schwarz_scale(net, x1, x1, field)
        want = getattr(same, field)[p1][:, p1]
        assert_close(getattr(permuted_same, field), want, scale[p1][:, p1], rtol, f"{field}, x2=None")
    assert torch.equal(permuted_same.var1, same.var1[p1])  # variances are per example: exact


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@SETTINGS
@given(batches=two_batches())
def test_symmetry(name, batches):
    x1, x2 = batches
    net = _activation_net(name)
    forward, backward = net.kernel(x1, x2), net.kernel(x2, x1)
    assert torch.equal(forward.var1, backward.var2) and torch.equal(forward.var2, backward.var1)
    for field in FIELDS:
        scale = cauchy_schwarz_scale(net, x1, x2, field)
        assert_close(getattr(forward, field), getattr(backward, field).T, scale, _rtol(name, field, x1.shape[1]), field)
    same = net.kernel(x1)
    for field in FIELDS:  # x2 = None: exactly symmetric
        value = getattr(same, field)
        assert torch.equal(value, value.T), field


# -- (d) blocked evaluation ---------------------------------------------------------------------


def _residual() -> nk.Layer:
    block = nk.serial(nk.ReLU(), nk.Dense(8, W_std=1.3, b_std=0.1), nk.Erf(), nk.Dense(8))
    return nk.serial(
        nk.Dense(8, W_std=1.2, b_std=0.1),
        nk.FanOut(2),
        nk.parallel(block, nk.Identity()),
        nk.FanInSum(),
        nk.ReLU(),
        nk.Dense(1),
    )


# (factory, hidden layers for the error model, singular layers for NNGP / NTK)
BLOCKED_NETS: dict[str, tuple[Callable[[], nk.Layer], int, int, int]] = {
    "mlp": (lambda: nk.serial(nk.Dense(8, W_std=1.5, b_std=0.1), nk.Erf(), nk.Dense(8), nk.GELU(), nk.Dense(1)), 2, 0, 0),
    "dropout": (
        lambda: nk.serial(nk.Dense(8, b_std=0.1), nk.ReLU(), nk.Dropout(0.3), nk.Dense(8), nk.Erf(), nk.Dense(1), nk.Dropout(0.2)),
        2, 0, 1,
    ),
    "residual": (_residual, 4, 0, 2),
    "concat": (
        lambda: nk.serial(
            nk.Dense(8, b_std=0.1),
            nk.FanOut(3),
            nk.parallel(nk.serial(nk.ReLU(), nk.Dense(5)), nk.Identity(), nk.serial(nk.Sign(), nk.Dense(3))),
            nk.FanInConcat(),
            nk.Dense(6, b_std=0.1),
            nk.Abs(),
            nk.Dense(1),
        ),
        3, 1, 2,
    ),
    "prod": (
        lambda: nk.serial(
            nk.Dense(8, b_std=0.1),
            nk.FanOut(2),
            nk.parallel(nk.serial(nk.ReLU(), nk.Dense(5)), nk.serial(nk.Erf(), nk.Dense(5))),
            nk.FanInProd(),
            nk.Dense(4),
            nk.LayerNorm(eps=0.1),
            nk.Dense(1),
        ),
        3, 0, 1,
    ),
}


@pytest.mark.parametrize("name", list(BLOCKED_NETS))
@SETTINGS
@given(batches=two_batches(max_rows=12, min_rows=7), with_x2=st.booleans())
def test_blocked_evaluation_equals_one_block(name, batches, with_x2):
    # Blocks of 3 x 3 pairs: the input kernel's matrix products then have other shapes, which
    # round differently (by <= d eps/2 relative), and the rest is the same computation on each
    # pair: the model's tolerance. Variances are per example and come out identical.
    build, layers, singular_nngp, singular_ntk = BLOCKED_NETS[name]
    net = build()
    x1, x2 = batches
    x2 = x2 if with_x2 else None
    blocked, whole = net.kernel(x1, x2, block_size=3), net.kernel(x1, x2)
    assert blocked.same_inputs == whole.same_inputs == (x2 is None)
    assert torch.equal(blocked.var1, whole.var1) and torch.equal(blocked.var2, whole.var2)
    other = x1 if x2 is None else x2
    for field, singular in zip(FIELDS, (singular_nngp, singular_ntk)):
        scale = cauchy_schwarz_scale(net, x1, other, field)
        rtol = tolerance(layers, x1.shape[1], singular)
        assert_close(getattr(blocked, field), getattr(whole, field), scale, rtol, field)
        if x2 is None:
            value = getattr(blocked, field)
            assert torch.equal(value, value.T), f"{field}: blocked kernel(x) not exactly symmetric"
            assert torch.equal(blocked.nngp.diagonal(), blocked.var1)


@SETTINGS
@given(batches=two_batches(max_rows=12, min_rows=7), p=st.floats(0.05, 0.9))
def test_blocked_dropout_factor_lands_on_the_global_diagonal_only(batches, p):
    # A network ending in Dropout(p): in training mode its kernel of kernel(x) is the evaluation
    # mode kernel with the diagonal (each example with itself, sharing its mask) times 1/(1-p),
    # and every other entry unchanged -- in every block, including the off-diagonal blocks that
    # hold no example twice. For kernel(x1, x2) no pair is an example with itself: no factor.
    x1, x2 = batches
    net = nk.serial(nk.Dense(8, b_std=0.1), nk.ReLU(), nk.Dense(4), nk.Dropout(p))
    train = net.kernel(x1, block_size=3)
    net.eval()
    test = net.kernel(x1, block_size=3)
    cross_eval = net.kernel(x1, x2, block_size=3)
    net.train()
    cross_train = net.kernel(x1, x2, block_size=3)
    diagonal = torch.eye(len(x1), dtype=torch.bool)
    for field in FIELDS:
        a, b = getattr(train, field), getattr(test, field)
        assert torch.equal(a[~diagonal], b[~diagonal]), field
        # One multiplication by the factor, rounded: eps relative.
        want = b.diagonal() / (1 - p)
        assert torch.allclose(a.diagonal(), want, rtol=2 * EPS, atol=0), field
        assert torch.equal(getattr(cross_train, field), getattr(cross_eval, field)), field


# -- (e) linear networks ------------------------------------------------------------------------
#
# L Dense layers in the NTK parameterization, no bias, no activation (or a linear one):
# f(x) = (sigma_L / sqrt(n_{L-1})) W_L ... (sigma_1 / sqrt(d)) W_1 x, W_l ~ N(0, 1) entrywise.
# NNGP: each layer maps K -> sigma_l^2 K, from K_0 = x.x'/d, so K_L = prod_l sigma_l^2 x.x'/d.
# NTK: the gradient of f with respect to W_l[i, j] is (sigma_l / sqrt(n_{l-1})) delta_i(x) h_j(x),
# with h = the layer's input and delta = the backpropagated signal. Summed over i, j:
#   sum_j h_j(x) h_j(x') sigma_l^2 / n_{l-1}  ->  sigma_l^2 K_{l-1}(x, x')  (law of large numbers)
#   sum_i delta_i(x) delta_i(x')              ->  prod_{m > l} sigma_m^2    (the same, backwards)
# so each layer contributes prod_m sigma_m^2 x.x'/d = K_L, and Theta = L K_L: the recursion
# Theta_l = K_l + sigma_l^2 Theta_{l-1}, Theta_0 = 0 gives the same by induction
# (Theta_l = K_l + sigma_l^2 (l - 1) K_{l-1} = l K_l). A linear activation a x (ABReLU(a, a))
# multiplies K by a^2 and its derivative term is a^2: it scales both by a^2 and adds no
# parameters. Tolerance: the library and the test each compute x.x' with d-term dot products
# (<= d eps/2 relative to |x||x'|) and then multiply by L + 1 factors: (d + 2 (L + 1)) eps of
# the norm-product scale |x||x'|/d * prod sigma^2 (* L for the NTK).


@SETTINGS
@given(
    batches=two_batches(),
    stds=st.lists(st.floats(0.1, 3.0), min_size=1, max_size=5),
    slopes=st.lists(st.one_of(st.none(), st.floats(-2.0, 2.0).filter(lambda a: abs(a) > 0.1)), min_size=5, max_size=5),
    same=st.booleans(),
)
def test_linear_network_closed_form(batches, stds, slopes, same):
    x1, x2 = batches
    x2 = None if same else x2
    other = x1 if x2 is None else x2
    layers, factor = [], 1.0
    for W_std, slope in zip(stds, slopes):
        layers.append(nk.Dense(7, W_std=W_std))
        factor *= W_std**2
        if slope is not None and len(layers) < 2 * len(stds) - 1:  # a linear activation in between
            layers.append(nk.ABReLU(slope, slope))
            factor *= slope**2
    k = nk.serial(*layers).kernel(x1, x2)
    d, n_dense = x1.shape[1], len(stds)
    gram = x1 @ other.T / d
    scale = torch.outer(x1.norm(dim=1), other.norm(dim=1)) / d * factor
    rtol = (d + 2 * (len(layers) + 1)) * EPS
    assert_close(k.nngp, factor * gram, scale, rtol, "nngp")
    assert_close(k.ntk, n_dense * factor * gram, n_dense * scale, rtol, "ntk")


def test_linear_closed_form_can_fail():
    # Negative control: Theta = (L - 1) K_L, the natural off-by-one, is rejected.
    x = torch.tensor([[1.0, 2.0], [-0.5, 0.3]], dtype=torch.float64)
    k = nk.serial(nk.Dense(3, W_std=1.5), nk.Dense(3, W_std=0.7)).kernel(x)
    want = 1 * (1.5**2 * 0.7**2) * (x @ x.T / 2)
    assert not torch.allclose(k.ntk, want, rtol=1e-3)


# -- (f) standard parameterization --------------------------------------------------------------
#
# One layer z = W x + b on d inputs, W_ij ~ N(0, W_std^2 / d), b_i ~ N(0, b_std^2): the parameters
# are W and b themselves, dz_i/dW_ij = x_j and dz_i/db_i = 1, so per output unit
#   Theta(x, x') = sum_j x_j x'_j + 1 = x.x' + 1     (the "+ 1" only with a bias),
# independent of W_std and b_std, while the NNGP is W_std^2 x.x'/d + b_std^2 as in the NTK
# parameterization. Two layers, z2 = V phi(z1) + c with V_ki ~ N(0, W2^2 / n), n the hidden width:
#   dz2/dV_ki = phi(z1_i):          sum_i phi(z1_i(x)) phi(z1_i(x'))  ->  n K_phi(x, x')
#   dz2/dc = 1:                     1
#   dz2/dW_ij = V_ki phi'(z1_i) x_j: sum_i V_ki^2 phi'(.) phi'(.) x.x' -> W2^2 Kdot (x.x')
#   dz2/db_i = V_ki phi'(z1_i):      -> W2^2 Kdot
# so Theta_2 = n K_phi + 1 + W2^2 Kdot (x.x' + 1): linear in the hidden width n. With no
# activation K_phi = K_1 = W1^2 x.x'/d + b1^2 and Kdot = 1. For ReLU, from the arc-cosine kernel
# (Cho & Saul 2009, eq. 6), with v1, v2, k the pre-activations' variances and covariance:
# K_phi = sqrt(v1 v2) (sin t + (pi - t) cos t) / (2 pi), Kdot = (pi - t) / (2 pi), t = arccos c.


def _arc_cosine(k: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norm = torch.outer(v1, v2).sqrt()
    t = torch.arccos((k / norm).clamp(-1, 1))
    return norm * (torch.sin(t) + (math.pi - t) * torch.cos(t)) / (2 * math.pi), (math.pi - t) / (2 * math.pi)


@SETTINGS
@given(batches=two_batches(), W_std=st.floats(0.1, 3.0), b_std=st.one_of(st.none(), st.floats(0.0, 2.0)), width=st.integers(1, 1000))
def test_standard_parameterization_one_layer(batches, W_std, b_std, width):
    x1, x2 = batches
    k = nk.Dense(width, W_std=W_std, b_std=b_std, parameterization="standard").kernel(x1, x2)
    d = x1.shape[1]
    bias = 0.0 if b_std is None else 1.0
    scale = torch.outer(x1.norm(dim=1), x2.norm(dim=1))
    rtol = (d + 4) * EPS  # one dot product, then a scaling and an addition
    assert_close(k.ntk, x1 @ x2.T + bias, scale + bias, rtol, "ntk")
    b2 = 0.0 if b_std is None else b_std**2
    assert_close(k.nngp, W_std**2 * (x1 @ x2.T) / d + b2, W_std**2 * scale / d + b2, rtol, "nngp")


@pytest.mark.parametrize("activation", [None, "ReLU"])
@SETTINGS
@given(
    batches=two_batches(),
    W1=st.floats(0.2, 2.0),
    W2=st.floats(0.2, 2.0),
    b1=st.floats(0.05, 1.0),
    b2=st.floats(0.05, 1.0),
    width=st.integers(1, 1000),
)
def test_standard_parameterization_two_layers(activation, batches, W1, W2, b1, b2, width):
    x1, x2 = batches
    d = x1.shape[1]
    hidden = [nk.Dense(width, W_std=W1, b_std=b1, parameterization="standard")]
    if activation == "ReLU":
        hidden.append(nk.ReLU())
    net = nk.serial(*hidden, nk.Dense(3, W_std=W2, b_std=b2, parameterization="standard"))
    k = net.kernel(x1, x2)
    dot = x1 @ x2.T
    k1 = W1**2 * dot / d + b1**2
    v1 = W1**2 * (x1 * x1).sum(1) / d + b1**2
    v2 = W1**2 * (x2 * x2).sum(1) / d + b1**2
    if activation is None:
        k_phi, kdot = k1, torch.ones_like(k1)
    else:
        k_phi, kdot = _arc_cosine(k1, v1, v2)
    want = width * k_phi + 1 + W2**2 * kdot * (dot + 1)
    # Scale: each of the three terms' Cauchy-Schwarz bound. Tolerance: ReLU's Kdot is linear in
    # the angle (one singular layer: acos(1 - dc)); the rest is rounding.
    norms = torch.outer(x1.norm(dim=1), x2.norm(dim=1))
    scale = width * torch.outer(v1, v2).sqrt() + 1 + W2**2 * (norms + 1)
    singular = 1 if activation == "ReLU" else 0
    assert_close(k.ntk, want, scale, tolerance(1, d, singular), "ntk")
    assert_close(k.nngp, W2**2 * k_phi + b2**2, W2**2 * torch.outer(v1, v2).sqrt() + b2**2, tolerance(1, d, 0), "nngp")


@SETTINGS
@given(batches=two_batches(), width=st.integers(1, 500))
def test_standard_ntk_is_linear_in_the_hidden_width(batches, width):
    # Theta_2(n) = n K_phi + (terms free of n): doubling the hidden width adds exactly n K_phi,
    # K_phi being the NNGP of the hidden layer's outputs; the NNGP does not depend on n.
    x1, x2 = batches

    def net(n):
        return nk.serial(
            nk.Dense(n, W_std=1.3, b_std=0.2, parameterization="standard"),
            nk.Erf(),
            nk.Dense(2, W_std=0.8, b_std=0.1, parameterization="standard"),
        )

    k_n, k_2n = net(width).kernel(x1, x2), net(2 * width).kernel(x1, x2)
    hidden = nk.serial(nk.Dense(width, W_std=1.3, b_std=0.2, parameterization="standard"), nk.Erf())
    k_phi = hidden.kernel(x1, x2, get="nngp").nngp
    assert torch.equal(k_n.nngp, k_2n.nngp)
    scale = cauchy_schwarz_scale(net(2 * width), x1, x2, "ntk")
    assert_close(k_2n.ntk - k_n.ntk, width * k_phi, scale, tolerance(1, x1.shape[1], 0), "ntk(2n) - ntk(n)")
