"""float32 is safe where neural-tangents users meet NaN and non-PSD kernels.

The dangerous places are correlation exactly +1 or -1 (identical or antipodal inputs), where
the arc-cosine kernels' derivative terms have infinite slope; inputs of zero norm, where a
correlation divides by a norm; and deep networks, where rounding errors accumulate. In each
case the kernels must be finite, symmetric, positive semi-definite up to round-off, and close to
the float64 kernels within a tolerance that follows from an error model stated beside it.

Notation: ``eps`` is the machine epsilon of the precision at hand (2**-23 for float32), ``L``
the number of hidden layers (Dense + activation), ``d`` the number of input features, ``N``
the number of inputs, and errors are measured relative to ``max|K|`` (every entry of a PSD
kernel is bounded by its largest diagonal entry, Cauchy-Schwarz).
"""

from __future__ import annotations

import math

import pytest
import torch

import ntkit as nk

EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
FIELDS = ("nngp", "ntk")

# -- the error model ----------------------------------------------------------------------------
#
# Rounding. A hidden layer rounds each kernel entry about 8 times (Dense: a multiply and an add,
# for the NNGP and again for the NTK; an activation's dual: arccos or arcsin, a few products
# and sums), each a relative error of at most eps/2. At the W_std used here the layer maps are
# at most mildly expanding (gain <= ~1 per layer), so errors add: <= 4 eps per layer, and the
# readout adds another layer's worth: ROUNDING = 4 (L + 1) eps.
#
# The correlation. The computed correlation c of two pre-activations carries an absolute error
# dc: the input kernel's d-term dot products round to <= d eps/2 relative to the norm product
# (Higham, "Accuracy and Stability of Numerical Algorithms", eq. 3.5), the variances and the
# product c = k / sqrt(v1 v2) add a few eps/2, and each layer a few more:
# dc <= (d + 4 (L + 1)) eps. Some duals depend on theta = arccos(c) linearly:
#   * the derivative term of the ABReLU family (ReLU, LeakyReLU, Abs),
#     Kdot = (a^2 + b^2)/2 - (a - b)^2 theta / (2 pi); relative to Kdot(0) its slope
#     (a - b)^2 / (pi (a^2 + b^2)) is <= 2/pi < 1. (The NNGP, sin(theta) + (pi - theta) cos(theta)
#     for ReLU, has zero slope at theta = 0 and pi and keeps an O(dc) error.)
#   * Sign's NNGP (2/pi) arcsin(c) = 1 - 2 theta / pi (slope 2/pi < 1), and so all after it.
# Such a "singular" layer turns dc into an error of theta of
#   * dc / sin(theta) for a generic pair of inputs (|dtheta/dc| = 1/sin(theta)),
#   * up to sqrt(2 dc) where the true |c| is 1 (identical or antipodal inputs), since
#     arccos(1 - t) = sqrt(2 t) + O(t^1.5): the square-root singularity.
# The errors of the layers add. Smooth duals (Erf, GELU: arcsin of a ratio bounded away from 1)
# have no such term. Every kernel map is pairwise (an entry depends on that pair's statistics
# and the two variances, which are computed at c = 1 exactly), so the singular pairs' errors
# never leak into the other entries. The float64 kernel carries the same kind of error with
# eps = 2**-52, far below the float32 tolerances: it is the reference.


def rounding(layers: int, eps: float) -> float:
    return 4 * (layers + 1) * eps


def correlation_error(layers: int, features: int, eps: float) -> float:
    return (features + 4 * (layers + 1)) * eps


def generic_tolerance(layers: int, features: int, singular_layers: int, sin_min: float, eps: float = EPS32) -> float:
    """Relative (to max|K|) error bound for pairs whose angles keep sin(theta) >= sin_min."""
    return rounding(layers, eps) + singular_layers * correlation_error(layers, features, eps) / sin_min


def tolerance(layers: int, features: int, singular_layers: int, eps: float = EPS32) -> float:
    """Relative (to max|K|) error bound for any pair, |c| = 1 included: sqrt(2 dc) per singular layer."""
    return rounding(layers, eps) + singular_layers * math.sqrt(2 * correlation_error(layers, features, eps))


def psd_bound(k: torch.Tensor, layers: int, eps: float = EPS32) -> float:
    """Lower bound on the smallest eigenvalue of a computed PSD kernel.

    The computed kernel is the exact (PSD) one plus E. Clamping c to [-1, 1] makes the errors at
    the square-root singularities one-sided (theta >= 0, so the entry of an identical pair never
    exceeds the geometric mean of the two diagonals: a duplicated pair's 2x2 block stays PSD),
    which leaves the O(eps) rounding: |E_ij| <= ROUNDING max|K|, and by Weyl's inequality
    lambda_min >= -||E||_2 >= -N max|E_ij|. So: -ROUNDING * N * max|K|.
    """
    return -rounding(layers, eps) * k.shape[0] * float(k.abs().max())


# -- networks and inputs ------------------------------------------------------------------------

# (name, activation, singular layers count toward the NNGP's / NTK's sqrt term)
ACTIVATIONS = {
    "ReLU": (nk.ReLU, False, True),
    "Erf": (nk.Erf, False, False),
    "GELU": (nk.GELU, False, False),
    "ABReLU": (lambda: nk.ABReLU(-0.3, 1.2), False, True),
    "Abs": (nk.Abs, False, True),
    "Sign": (nk.Sign, True, True),
}


def mlp(activation, depth: int, W_std: float = 1.4, b_std: float | None = 0.05, width: int = 16) -> nk.Serial:
    layers = []
    for _ in range(depth):
        layers += [nk.Dense(width, W_std=W_std, b_std=b_std), activation()]
    return nk.serial(*layers, nk.Dense(1, W_std=W_std, b_std=b_std))


def duplicated_inputs(n: int = 16, d: int = 6) -> torch.Tensor:
    """Rows i and i + n identical (c = +1), rows i and i + 2n antipodal (c = -1).

    The values are rounded to float32 first, so that both precisions see the same inputs.
    Whether a duplicated pair's computed correlation lands above 1 (clamped: exact) or below it
    (the square-root regime) depends on how its numbers round; 16 pairs make sure that both
    happen, in both precisions.
    """
    generator = torch.Generator().manual_seed(1234)
    base = torch.randn(n, d, generator=generator, dtype=torch.float64).float().double()
    return torch.cat([base, base, -base])


def singular_pairs(x: torch.Tensor) -> torch.Tensor:
    """Mask of the pairs of ``duplicated_inputs`` at |c| = 1 (the diagonal included)."""
    n = x.shape[0] // 3
    index = torch.arange(x.shape[0])
    return (index[:, None] % n) == (index[None, :] % n)


def layer_sines(net: nk.Serial, x: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """min sin(theta) over the pairs outside ``mask``, at each activation's input (float64).

    Walks the network's layers one by one (each layer's kernel map is public).
    """
    layers = list(net.layers)
    k = nk.serial(layers[0]).kernel(x)
    sines = []
    for layer in layers[1:]:
        if isinstance(layer, nk.Activation):
            c = k.nngp / torch.outer(k.var1, k.var2).sqrt()
            sines.append(float((1 - c[~mask] ** 2).clamp(min=0).sqrt().min()))
        k = layer.kernel_map(k)
    return sines


def generic_inputs(n: int = 12, d: int = 6, zero_row: int | None = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64).float().double()
    if zero_row is not None:
        x[zero_row] = 0.0
    return x


def relative_error(k32: torch.Tensor, k64: torch.Tensor) -> torch.Tensor:
    """Entrywise |k32 - k64| / max|k64|."""
    return (k32.double() - k64).abs() / k64.abs().max()


def check_close(k32, k64, mask, generic: float, singular: float, what: str) -> None:
    error = relative_error(k32, k64)
    assert float(error[~mask].max()) <= generic, f"{what}: generic pairs {float(error[~mask].max()):.3g} > {generic:.3g}"
    assert float(error[mask].max()) <= singular, f"{what}: |c| = 1 pairs {float(error[mask].max()):.3g} > {singular:.3g}"


def check_same_inputs_kernel(k: nk.Kernel, layers: int) -> None:
    """Finite, exactly symmetric, PSD up to round-off (x2=None); the diagonal is checked below."""
    for field in FIELDS:
        value = getattr(k, field)
        assert bool(torch.isfinite(value).all()), f"{field} has NaN or inf"
        assert torch.equal(value, value.T), f"{field} of kernel(x) is not exactly symmetric"
        smallest = float(torch.linalg.eigvalsh(value.double()).min())
        eps = torch.finfo(k.dtype).eps
        assert smallest >= psd_bound(value, layers, eps), f"{field} not PSD: smallest eigenvalue {smallest:.3g}"


# -- (a) correlation exactly +1 and -1 ----------------------------------------------------------


@pytest.mark.parametrize("bias", [None, 0.05])
@pytest.mark.parametrize("name, depth", [(n, L) for n in ACTIVATIONS for L in (1, 3) if not (n == "Sign" and L > 1)])
def test_identical_and_antipodal_inputs(name, depth, bias):
    # Sign is checked at depth 1 only: its NNGP's error sqrt(2 dc) becomes the next layer's dc,
    # so at depth L it is ~dc^(1/2^L) (0.1 at depth 3 in float32, 0.01 in float64): see
    # test_duplicated_inputs_are_exactly_correlated.
    activation, singular_nngp, singular_ntk = ACTIVATIONS[name]
    net = mlp(activation, depth, b_std=bias)
    x = duplicated_inputs()
    d = x.shape[1]
    mask = singular_pairs(x)
    sin_min = min(layer_sines(net, x, mask))
    k32, k64 = net.kernel(x, dtype=torch.float32), net.kernel(x)
    assert k32.nngp.dtype == torch.float32
    check_same_inputs_kernel(k32, depth)
    check_same_inputs_kernel(k64, depth)

    # The same rows given again as a separate x2 tensor with equal values: the pairs (i, i) are
    # then cross pairs, not "the same inputs", and go through the generic formula at c = 1.
    copy = x.clone()
    c32, c64 = net.kernel(x, copy, dtype=torch.float32), net.kernel(x, copy)
    assert not c64.same_inputs
    for field, singular in zip(FIELDS, (singular_nngp, singular_ntk)):
        layers = depth if singular else 0
        generic, at_one = generic_tolerance(depth, d, layers, sin_min), tolerance(depth, d, layers)
        check_close(getattr(k32, field), getattr(k64, field), mask, generic, at_one, f"{field} float32")
        for value in (getattr(c32, field), getattr(c64, field)):
            assert bool(torch.isfinite(value).all())
        check_close(getattr(c32, field), getattr(c64, field), mask, generic, at_one, f"{field} float32, x2 a copy")
        # ... and in float64 the copy agrees with kernel(x) within the same model.
        generic, at_one = generic_tolerance(depth, d, layers, sin_min, EPS64), tolerance(depth, d, layers, EPS64)
        check_close(getattr(c64, field), getattr(k64, field), mask, generic, at_one, f"{field} kernel(x, copy)")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["Sign", "Step", "ReLU", "Abs"])
def test_duplicated_inputs_are_exactly_correlated(name, dtype):
    # Two copies of one input are the same point: every statistic of the pair equals the
    # example's own, up to rounding only (no square-root amplification): 4 (L + 1) eps.
    activation = {"Sign": nk.Sign, "Step": lambda: nk.RectifiedMonomial(0), "ReLU": nk.ReLU, "Abs": nk.Abs}[name]
    depth = 3
    net = mlp(activation, depth)
    x = duplicated_inputs()
    n = x.shape[0] // 3
    rtol = rounding(depth, torch.finfo(dtype).eps)
    k = net.kernel(x, dtype=dtype)
    single = net.kernel(x[:n], dtype=dtype)
    copied = net.kernel(x[:n], x[:n].clone(), dtype=dtype)
    for field in FIELDS:
        value = getattr(k, field)
        scale = float(value.abs().max())
        duplicate_pairs = value[:n, n : 2 * n].diagonal()
        assert float((duplicate_pairs - value[:n, :n].diagonal()).abs().max()) <= rtol * scale
        copy_pairs = getattr(copied, field).diagonal()
        assert float((copy_pairs - getattr(single, field).diagonal()).abs().max()) <= rtol * scale


# -- (b) zero-norm inputs -----------------------------------------------------------------------

ZERO_SAFE = {  # activations with phi(0) = 0, and those with a square-root singularity
    "ReLU": (nk.ReLU, 0, 1),
    "Erf": (nk.Erf, 0, 0),
    "GELU": (nk.GELU, 0, 0),
    "ABReLU": (lambda: nk.ABReLU(-0.3, 1.2), 0, 1),
    "Abs": (nk.Abs, 0, 1),
    "Sign": (nk.Sign, 1, 1),
    "Step": (lambda: nk.RectifiedMonomial(0), 1, 1),
    "RectifiedMonomial(2)": (lambda: nk.RectifiedMonomial(2), 0, 0),
    "Monomial(3)": (lambda: nk.Monomial(3), 0, 0),
    "Tanh": (nk.Tanh, 0, 0),
}


@pytest.mark.parametrize("bias", [None, 0.1])
@pytest.mark.parametrize("name", list(ZERO_SAFE))
def test_zero_norm_input(name, bias):
    activation, singular_nngp, singular_ntk = ZERO_SAFE[name]
    depth = 2
    net = mlp(activation, depth, W_std=1.2, b_std=bias, width=8)
    zero = 3
    x = generic_inputs(zero_row=zero)
    d = x.shape[1]
    k32, k64 = net.kernel(x, dtype=torch.float32), net.kernel(x)
    check_same_inputs_kernel(k32, depth)
    check_same_inputs_kernel(k64, depth)
    if bias is None:
        # With no bias the zero input's pre-activations are the constant 0 in every layer, and
        # phi(0) = 0: its outputs and all their gradients vanish, so its row of both kernels is
        # exactly 0 (not NaN from 0/0, not a leftover correlation).
        for k in (k32, k64):
            for field in FIELDS:
                row = getattr(k, field)[zero]
                assert torch.equal(row, torch.zeros_like(row)), field
    else:
        assert float(k64.var1[zero]) > 0  # the bias makes it an ordinary input
    # Generic inputs: no pair at |c| = 1 (the diagonal is exact by construction; the zero input's
    # correlations are 0 by convention without a bias), so the generic model applies.
    mask = torch.eye(len(x), dtype=torch.bool)
    if bias is None:
        mask[zero], mask[:, zero] = True, True
    sin_min = min(layer_sines(net, x, mask))
    for field, singular in zip(FIELDS, (singular_nngp, singular_ntk)):
        rtol = generic_tolerance(depth, d, depth * singular, sin_min)
        error = float(relative_error(getattr(k32, field), getattr(k64, field)).max())
        assert error <= rtol, f"{field}: float32 vs float64 {error:.3g} > {rtol:.3g}"


def test_zero_norm_input_as_x2():
    # The zero vector given as a separate x2 (a cross pair with variance 0 on one side only).
    net = mlp(nk.ReLU, 2, b_std=None)
    x = generic_inputs(zero_row=None)
    zero = torch.zeros(2, x.shape[1], dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        k = net.kernel(x, zero, dtype=dtype)
        for field in FIELDS:
            assert torch.equal(getattr(k, field), torch.zeros_like(getattr(k, field)))


# -- (c) depth 100 ------------------------------------------------------------------------------

DEEP = 100
# Near criticality, so that signals neither explode nor vanish over 100 layers:
# * ReLU: chi_1 = W_std^2 E[phi'(u)^2] = 2 * 1/2 = 1 (He et al. 2015; Schoenholz et al. 2017);
# * Erf: the variance map q -> W^2 (2/pi) arcsin(2q / (1 + 2q)) + b^2 has, for W = 1, b = 0.05,
#   the fixed point q* = 0.153, where chi_1 = W^2 (4/pi) / sqrt(1 + 4 q*) = 1.0025 (so
#   perturbations grow by at most 1.0025^100 = 1.28 over the network).
DEEP_NETS = {"ReLU": (nk.ReLU, math.sqrt(2.0), 0.05, 1.0), "Erf": (nk.Erf, 1.0, 0.05, 1.0025**DEEP)}


@pytest.mark.parametrize("name", list(DEEP_NETS))
def test_depth_100(name):
    activation, W_std, b_std, growth = DEEP_NETS[name]
    net = mlp(activation, DEEP, W_std=W_std, b_std=b_std, width=64)
    # Distinct generic inputs and a zero row (identical and antipodal inputs are case (a)).
    zero = 3
    x = generic_inputs(zero_row=zero)
    k32, k64 = net.kernel(x, dtype=torch.float32), net.kernel(x)
    check_same_inputs_kernel(k32, DEEP)
    check_same_inputs_kernel(k64, DEEP)
    # Error model. The worst-case bounds of (a) grow like L (rounding) and L^2 / sin(theta)
    # (ReLU's Kdot) and are vacuous at L = 100, so here: rounding errors are unbiased and
    # independent, and add in quadrature (Higham, "Accuracy and Stability", sec. 2.8). About 8
    # roundings per layer and entry, each uniform on [-eps/2, eps/2] (standard deviation
    # eps / (2 sqrt 3)), give after L + 1 layers sigma_K = sqrt(8 (L + 1)) eps / (2 sqrt 3),
    # times the maps' growth (chi_1^L above). ReLU's NTK adds, at hidden layer l, the error of
    # Kdot = (pi - theta) / (2 pi) relative to Kdot >= 1/2: (2/pi) dc_l / sin(theta_l), with
    # dc_l ~ sqrt(8 (l + 1)) eps / (2 sqrt 3) the correlation's own accumulated rounding and
    # theta_l the smallest angle between distinct inputs there (from the float64 kernels).
    # Tolerance: 6 sigma (the largest of the N^2 = 144 entries' errors is ~3 sigma).
    unit = EPS32 / (2 * math.sqrt(3))
    sigma_k = math.sqrt(8 * (DEEP + 1)) * unit * growth
    sigma = dict(nngp=sigma_k, ntk=sigma_k)
    if name == "ReLU":
        mask = torch.eye(len(x), dtype=torch.bool)
        sines = layer_sines(net, x, mask)
        assert min(sines) > 0.01  # the model's premise: no two inputs have become identical
        kdot = sum((2 / math.pi * math.sqrt(8 * (l + 1)) * unit / s) ** 2 for l, s in enumerate(sines))
        sigma["ntk"] = math.sqrt(sigma_k**2 + kdot)
    for field in FIELDS:
        error = float(relative_error(getattr(k32, field), getattr(k64, field)).max())
        assert error <= 6 * sigma[field], f"{field}: float32 vs float64 {error:.3g} > {6 * sigma[field]:.3g}"


@pytest.mark.parametrize("name", list(DEEP_NETS))
def test_depth_100_with_identical_and_antipodal_inputs_stays_finite_and_psd(name):
    # At depth 100 the square-root errors of (a) add up to O(L^1.5 sqrt(eps)), too large a bound
    # to compare float32 with float64 usefully; the safety properties must still hold exactly.
    activation, W_std, b_std, _ = DEEP_NETS[name]
    net = mlp(activation, DEEP, W_std=W_std, b_std=b_std, width=64)
    x = duplicated_inputs()
    check_same_inputs_kernel(net.kernel(x, dtype=torch.float32), DEEP)
    check_same_inputs_kernel(net.kernel(x), DEEP)


# -- x2 = None and x2 is x1 ---------------------------------------------------------------------


def _zoo() -> dict[str, nk.Layer]:
    """Networks whose last layer is not a Dense with a bias (that case has its own test below)."""
    residual = nk.serial(
        nk.Dense(8, b_std=0.1),
        nk.FanOut(2),
        nk.parallel(nk.serial(nk.ReLU(), nk.Dense(8, W_std=1.3, b_std=0.1)), nk.Identity()),
        nk.FanInSum(),
    )
    return {
        "ReLU": nk.serial(nk.Dense(8, b_std=0.1), nk.ReLU(), nk.Dense(8, b_std=0.1), nk.ReLU(), nk.Dense(1)),
        "Sign": nk.serial(nk.Dense(8, b_std=0.1), nk.Sign(), nk.Dense(1)),
        "Erf+LayerNorm": nk.serial(nk.Dense(8, b_std=0.1), nk.LayerNorm(), nk.Erf(), nk.Dense(1)),
        "Dropout": nk.serial(nk.Dense(8, b_std=0.1), nk.ReLU(), nk.Dropout(0.3), nk.Dense(8), nk.GELU(), nk.Dense(1)),
        "residual": nk.serial(residual, nk.ReLU(), nk.Dense(1)),
        "FanInProd": nk.serial(
            nk.Dense(8, b_std=0.1),
            nk.FanOut(2),
            nk.parallel(nk.serial(nk.Abs(), nk.Dense(4)), nk.serial(nk.Tanh(), nk.Dense(4))),
            nk.FanInProd(),
            nk.Dense(1),
        ),
        "ends in an activation": nk.serial(nk.Dense(8, b_std=0.1), nk.Erf(), nk.Dense(8, b_std=0.1), nk.Abs()),
    }


@pytest.mark.parametrize("name", list(_zoo()))
@pytest.mark.parametrize("block_size", [None, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_diagonal_is_var1_exactly(name, block_size, dtype):
    # Each layer computes an example's variance and the diagonal of kernel(x) with the same
    # operations (or copies one into the other), so they are equal bit for bit, in every block.
    net = _zoo()[name]
    x = torch.cat([generic_inputs(n=6, zero_row=2), duplicated_inputs(n=2)])
    k = net.kernel(x, block_size=block_size, dtype=dtype)
    assert k.same_inputs
    assert torch.equal(k.nngp.diagonal(), k.var1)
    assert k.var2 is k.var1 or torch.equal(k.var2, k.var1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dense_with_a_bias_keeps_its_diagonal_equal_to_its_variances(dtype):
    x = generic_inputs(n=64, zero_row=None)
    for net in (nk.Dense(4, W_std=1.4, b_std=0.3), nk.serial(nk.Dense(8, b_std=0.1), nk.ReLU(), nk.Dense(1, W_std=1.3, b_std=0.2))):
        k = net.kernel(x, dtype=dtype)
        assert torch.equal(k.nngp.diagonal(), k.var1)


@pytest.mark.parametrize("name", list(_zoo()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_x2_is_x1_means_the_same_inputs(name, dtype):
    net = _zoo()[name]
    x = generic_inputs(n=7)
    implicit, explicit = net.kernel(x, dtype=dtype), net.kernel(x, x, dtype=dtype)
    assert implicit.same_inputs and explicit.same_inputs
    for field in ("nngp", "ntk", "var1", "var2"):
        assert torch.equal(getattr(implicit, field), getattr(explicit, field)), field


def test_x2_equal_to_x1_but_another_tensor_is_not_the_same_examples():
    # Dropout tells "the same example" (shared mask) from "another example with equal values"
    # (independent masks): at the end of the network the diagonal differs by exactly 1/(1-p).
    p = 0.25
    net = nk.serial(nk.Dense(8, b_std=0.1), nk.ReLU(), nk.Dense(4), nk.Dropout(p))
    x = generic_inputs(n=5)
    same, other = net.kernel(x, x), net.kernel(x, x.clone())
    assert not other.same_inputs
    eps = EPS64
    for field in FIELDS:
        a, b = getattr(same, field), getattr(other, field)
        off = ~torch.eye(len(x), dtype=torch.bool)
        # Off the diagonal both are the kernel before Dropout, up to rounding (kernel(x) mirrors
        # its upper triangle, the cross kernel computes both orders): ROUNDING of 2 layers. On
        # the diagonal the same example's entry is the copy's times 1/(1-p): one rounding of the
        # factor, and the sqrt(2 dc) of ReLU's Kdot at the copy's c = 1 - O(eps) for the NTK.
        scale = float(a.abs().max())
        assert float((a[off] - b[off]).abs().max()) <= rounding(2, eps) * scale, field
        ratio = a.diagonal() / b.diagonal()
        slack = 2 * eps + (math.sqrt(2 * correlation_error(1, x.shape[1], eps)) if field == "ntk" else 0.0)
        assert torch.allclose(ratio, torch.full_like(ratio, 1 / (1 - p)), rtol=slack, atol=0), field
