"""Bad input and invalid options get an ``nk.NtkitError`` that says where, what and why.

Every message must name the layer's place in the network (``serial[3] (ReLU)``), the argument
and the offending shape or value (DESIGN.md, "Reliability"; STYLE.md, habit 7). The regexes
pin those parts and leave the wording of the remedy free. Where a check could pass by raising
for the wrong reason, a positive control beside it shows that valid input of the same shape is
accepted and gives the right kernel.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import ntkit as nk


def _x(n: int = 4, d: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator, dtype=torch.float64)


def _mlp() -> nk.Serial:
    return nk.serial(nk.Dense(8, W_std=1.5, b_std=0.1), nk.ReLU(), nk.Dense(1))


def test_ntkit_error_is_a_value_error_with_its_path():
    error = nk.NtkitError("bad", ("serial[1] (serial)", "serial[0] (ReLU)"))
    assert isinstance(error, ValueError)
    assert str(error) == "serial[1] (serial) > serial[0] (ReLU): bad"
    with pytest.raises(ValueError):  # callers that catch ValueError catch ntkit's errors
        _mlp().kernel(_x()[0])


# -- inputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, hint",
    [((3,), ""), ((2, 4, 3), r" \(kernels of image or sequence inputs need convolutional layers"), ((), "")],
)
def test_wrong_rank_of_x1(shape, hint):
    x = torch.zeros(shape, dtype=torch.float64)
    pattern = rf"^x1 has shape {re.escape(str(tuple(shape)))}; expected \(N, features\){hint}"
    with pytest.raises(nk.NtkitError, match=pattern):
        _mlp().kernel(x)


def test_wrong_rank_of_x2():
    with pytest.raises(nk.NtkitError, match=r"^x2 has shape \(3,\); expected \(N, features\)"):
        _mlp().kernel(_x(), _x()[0])


def test_empty_batch():
    with pytest.raises(nk.NtkitError, match=r"^x1 has shape \(0, 3\); it needs at least one example"):
        _mlp().kernel(torch.zeros(0, 3))
    with pytest.raises(nk.NtkitError, match=r"^x2 has shape \(0, 3\); it needs at least one example"):
        _mlp().kernel(torch.zeros(2, 3), torch.zeros(0, 3))


def test_complex_input():
    with pytest.raises(nk.NtkitError, match=r"^x1 has dtype torch\.complex64; expected a real tensor"):
        _mlp().kernel(torch.zeros(2, 3, dtype=torch.complex64))


def test_feature_mismatch_between_x1_and_x2():
    pattern = r"^x1 has 3 features per example but x2 has 5 \(shapes \(4, 3\) and \(2, 5\)\)"
    with pytest.raises(nk.NtkitError, match=pattern):
        _mlp().kernel(_x(4, 3), _x(2, 5))


@pytest.mark.parametrize("argument", ["x1", "x2"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("row", [0, 2])
def test_nan_and_inf_inputs(argument, value, row):
    good = _x(4, 3)
    bad = good.clone()
    bad[row, 1] = value
    x1, x2 = (bad, good) if argument == "x1" else (good, bad)
    # The argument, what is wrong with it, and where: the first offending row.
    pattern = rf"^{argument} contains .*(NaN|nan|inf).* row {row}\b"
    with pytest.raises(nk.NtkitError, match=pattern):
        _mlp().kernel(x1, x2)
    if argument == "x1":  # x2=None: the same check on the only batch
        with pytest.raises(nk.NtkitError, match=pattern):
            _mlp().kernel(bad)


# -- activations need Gaussian (affine) inputs --------------------------------------------------

_ACTIVATIONS = [
    nk.ReLU, nk.Erf, nk.GELU, nk.Abs, nk.Sign, nk.Sin, nk.Cos, nk.Rbf, nk.Exp, nk.Gaussian, nk.Tanh,
    nk.Sigmoid, nk.Softplus, lambda: nk.LeakyReLU(0.1), lambda: nk.ABReLU(-0.5, 1.0),
    lambda: nk.Monomial(2), lambda: nk.RectifiedMonomial(2), lambda: nk.Polynomial([0.0, 1.0, 0.5]),
    lambda: nk.Hermite(2), lambda: nk.Elementwise(torch.sin),
]


@pytest.mark.parametrize("make", _ACTIVATIONS)
def test_activation_as_first_layer(make):
    activation = make()
    name = type(activation).__name__
    pattern = rf"^serial\[0\] \({name}\): the input of {name} is not Gaussian.*Dense"
    with pytest.raises(nk.NtkitError, match=pattern):
        nk.serial(activation, nk.Dense(1)).kernel(_x())
    with pytest.raises(nk.NtkitError, match=rf"^{name}: the input of {name} is not Gaussian"):
        activation.kernel(_x())  # a bare layer names itself


def test_activation_after_activation():
    net = nk.serial(nk.Dense(3), nk.ReLU(), nk.Erf())
    with pytest.raises(nk.NtkitError, match=r"^serial\[2\] \(Erf\): the input of Erf is not Gaussian"):
        net.kernel(_x())


def test_activation_inside_a_nested_serial_names_the_whole_path():
    net = nk.serial(nk.Dense(3), nk.serial(nk.Dense(2), nk.ReLU(), nk.Sign()))
    pattern = r"^serial\[1\] \(serial\) > serial\[2\] \(Sign\): the input of Sign is not Gaussian"
    with pytest.raises(nk.NtkitError, match=pattern):
        net.kernel(_x())


def test_activation_after_dropout_in_training_mode():
    net = nk.serial(nk.Dense(3, b_std=0.1), nk.Dropout(0.5), nk.ReLU(), nk.Dense(1))
    assert net.training  # torch modules start in training mode
    with pytest.raises(nk.NtkitError, match=r"^serial\[2\] \(ReLU\): the input of ReLU is not Gaussian"):
        net.kernel(_x())
    # Positive control: in evaluation mode Dropout is the identity, in both faces, so the same
    # network is valid and has exactly the kernel of the network without it.
    net.eval()
    without = nk.serial(nk.Dense(3, b_std=0.1), nk.ReLU(), nk.Dense(1))
    got, want = net.kernel(_x()), without.kernel(_x())
    assert torch.equal(got.nngp, want.nngp) and torch.equal(got.ntk, want.ntk)


# -- LayerNorm over a zero vector ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argument, block_size",
    [("x1", None), ("x2", None), ("x2", 2), ("x1", 2)],
)
def test_layernorm_of_a_zero_vector(argument, block_size):
    good = _x(5, 3)
    bad = good.clone()
    bad[3] = 0.0  # with no bias, Dense maps it to the zero vector: variance 0
    x1, x2 = (bad, None) if argument == "x1" else (good, bad)
    net = nk.serial(nk.Dense(4), nk.LayerNorm(), nk.ReLU())
    pattern = rf"^serial\[1\] \(LayerNorm\): .*zero vector \(variance 0\).*\b{argument}\b.*eps"
    with pytest.raises(nk.NtkitError, match=pattern):
        net.kernel(x1, x2, block_size=block_size)


def test_layernorm_of_a_zero_input_is_fine_with_a_bias_or_eps():
    x = _x(5, 3)
    x[3] = 0.0
    # With a bias the pre-activation of the zero input has variance b_std**2 > 0: the
    # normalised kernel is K / sqrt(v1 v2), whose diagonal is exactly 1.
    k = nk.serial(nk.Dense(4, b_std=0.3), nk.LayerNorm()).kernel(x)
    assert torch.equal(k.nngp.diagonal(), torch.ones(5, dtype=torch.float64))
    # With eps > 0 the zero input maps to the zero vector: its row of the kernel is 0.
    k = nk.serial(nk.Dense(4), nk.LayerNorm(eps=0.1)).kernel(x)
    assert torch.equal(k.nngp[3], torch.zeros(5, dtype=torch.float64))


# -- invalid options ----------------------------------------------------------------------------

_BAD_OPTIONS = [
    (lambda: nk.Dense(0), r"^Dense: out_features must be a positive integer, got 0$"),
    (lambda: nk.Dense(2.5), r"^Dense: out_features must be a positive integer, got 2\.5$"),
    (lambda: nk.Dense(3, W_std=-1.0), r"^Dense: W_std must be a finite number >= 0, got -1\.0$"),
    (lambda: nk.Dense(3, W_std=math.nan), r"^Dense: W_std must be a finite number >= 0, got nan$"),
    (lambda: nk.Dense(3, b_std=-0.5), r"^Dense: b_std must be a finite number >= 0, got -0\.5$"),
    (lambda: nk.Dense(3, parameterization="foo"), r"^Dense: parameterization must be 'ntk' or 'standard', got 'foo'$"),
    (lambda: nk.Dropout(1), r"^Dropout: p \(the drop probability\) must be in \[0, 1\), got 1$"),
    (lambda: nk.Dropout(-0.1), r"^Dropout: p \(the drop probability\) must be in \[0, 1\), got -0\.1$"),
    (lambda: nk.Elementwise(torch.tanh, order=1), r"^Elementwise: order must be an integer >= 2, got 1$"),
    (lambda: nk.Elementwise(3.0), r"^Elementwise: fn must be callable, got 3\.0$"),
    (lambda: nk.Monomial(-1), r"^Monomial: degree must be an integer >= 0, got -1$"),
    (lambda: nk.Monomial(1.5), r"^Monomial: degree must be an integer >= 0, got 1\.5$"),
    (lambda: nk.RectifiedMonomial(-1), r"^RectifiedMonomial: degree must be an integer >= 0, got -1$"),
    (lambda: nk.Hermite(-1), r"^Hermite: degree must be an integer >= 0, got -1$"),
    (lambda: nk.Polynomial([]), r"^Polynomial: coef must be a non-empty 1-D sequence of finite numbers"),
    (lambda: nk.Polynomial([1.0, math.inf]), r"^Polynomial: coef must be a non-empty 1-D sequence of finite numbers"),
    (lambda: nk.LayerNorm(eps=-1.0), r"^LayerNorm: eps must be a number >= 0, got -1\.0$"),
    (lambda: nk.FanOut(0), r"^FanOut: n must be a positive integer, got 0$"),
    (lambda: nk.serial(), r"^serial\(\) needs at least one layer$"),
    (lambda: nk.parallel(), r"^parallel\(\) needs at least one layer$"),
    (lambda: nk.serial(nk.Dense(2), torch.nn.ReLU()), r"^serial\[1\] is ReLU, not an ntkit layer.*Elementwise"),
]


@pytest.mark.parametrize("build, pattern", _BAD_OPTIONS)
def test_invalid_layer_options(build, pattern):
    with pytest.raises(nk.NtkitError, match=pattern):
        build()


@pytest.mark.parametrize(
    "options, pattern",
    [
        (dict(get="foo"), r"^get must name 'nngp' and/or 'ntk', got 'foo'$"),
        (dict(get=("nngp", "ntkk")), r"^get must name 'nngp' and/or 'ntk', got \('nngp', 'ntkk'\)$"),
        (dict(get=()), r"^get must name 'nngp' and/or 'ntk', got \(\)$"),
        (dict(dtype=torch.int64), r"^dtype must be torch\.float64 or torch\.float32, got torch\.int64$"),
        (dict(dtype=torch.float16), r"^dtype must be torch\.float64 or torch\.float32, got torch\.float16$"),
        (dict(block_size=0), r"^block_size must be a positive integer, got 0$"),
        (dict(block_size=-3), r"^block_size must be a positive integer, got -3$"),
    ],
)
def test_invalid_kernel_options(options, pattern):
    with pytest.raises(nk.NtkitError, match=pattern):
        _mlp().kernel(_x(), **options)


def test_valid_get_options_select_the_ntk():
    # Positive control for the checks above: the accepted spellings do what they say.
    assert _mlp().kernel(_x(), get="nngp").ntk is None
    assert _mlp().kernel(_x(), get=("ntk",)).ntk is not None


# -- combinators --------------------------------------------------------------------------------


def test_parallel_with_the_wrong_number_of_branches():
    net = nk.serial(nk.FanOut(3), nk.parallel(nk.Dense(1), nk.Dense(1)), nk.FanInSum())
    pattern = r"^serial\[1\] \(parallel\): .*\b2 layers\b.*\b3\b.*FanOut"
    with pytest.raises(nk.NtkitError, match=pattern):
        net.kernel(_x())
    # A single input (no FanOut at all).
    net = nk.serial(nk.Dense(2), nk.parallel(nk.Dense(1), nk.Dense(1)), nk.FanInSum())
    with pytest.raises(nk.NtkitError, match=r"^serial\[1\] \(parallel\): .*\b2 layers\b.*\b1\b.*FanOut"):
        net.kernel(_x())


def test_bare_parallel_names_itself():
    net = nk.parallel(nk.Dense(1), nk.Dense(1))
    with pytest.raises(nk.NtkitError, match=r"\bparallel\b.*\b2 layers\b.*\b1\b"):
        net.kernel(_x())


def test_parallel_forward_with_the_wrong_number_of_branches_names_itself():
    net = nk.parallel(nk.Dense(1), nk.Dense(1))
    with pytest.raises(nk.NtkitError, match=r"\bparallel\b.*\b2 layers\b.*\b3\b"):
        net([torch.zeros(2, 3)] * 3)


def test_fan_in_sum_given_a_single_input():
    pattern = r"received a single input; FanInSum merges branches \(use FanOut first\)"
    with pytest.raises(nk.NtkitError, match=r"^serial\[1\] \(FanInSum\): " + pattern):
        nk.serial(nk.Dense(2), nk.FanInSum()).kernel(_x())
    with pytest.raises(nk.NtkitError, match=r"^FanInSum: " + pattern):
        nk.FanInSum().kernel(_x())
    with pytest.raises(nk.NtkitError, match=r"^FanInSum: expects a list of branches \(use FanOut first\)"):
        nk.FanInSum()(torch.zeros(2, 3))  # the finite face


@pytest.mark.parametrize("merge", [nk.FanInConcat, nk.FanInProd])
def test_other_merges_given_a_single_input(merge):
    name = merge.__name__
    with pytest.raises(nk.NtkitError, match=rf"^serial\[1\] \({name}\): received a single input; {name} merges"):
        nk.serial(nk.Dense(2), merge()).kernel(_x())


def test_single_input_layer_given_branches():
    pattern = r"^serial\[1\] \(Dense\): received 2 branches; Dense takes one input.*FanInSum"
    with pytest.raises(nk.NtkitError, match=pattern):
        nk.serial(nk.FanOut(2), nk.Dense(3)).kernel(_x())


def test_fan_in_concat_of_branches_of_different_ranks():
    # Fully-connected kernels all have rank-1 feature shapes, so ranks can only differ in the
    # finite face: (N, 3) and (N, 3, 4) cannot be concatenated along the feature axis.
    pattern = r"^FanInConcat: branches have incompatible shapes \[\(2, 3\), \(2, 3, 4\)\]$"
    with pytest.raises(nk.NtkitError, match=pattern):
        nk.FanInConcat()([torch.zeros(2, 3), torch.zeros(2, 3, 4)])
    with pytest.raises(nk.NtkitError, match=r"^FanInConcat: branches have incompatible shapes \[\(2, 3\), \(5, 3\)\]$"):
        nk.FanInConcat()([torch.zeros(2, 3), torch.zeros(5, 3)])


def test_fan_in_concat_of_different_widths_is_valid():
    # Positive control: widths may differ for a concatenation; the per-unit kernel is the
    # width-weighted mean (3 * 1.0**2 + 1 * 2.0**2) / 4 * x.x'/d. Exact up to a few roundings of
    # O(1) numbers: 8 eps.
    x = _x()
    net = nk.serial(nk.FanOut(2), nk.parallel(nk.Dense(3, W_std=1.0), nk.Dense(1, W_std=2.0)), nk.FanInConcat())
    k = net.kernel(x)
    want = (3 * 1.0 + 1 * 4.0) / 4 * (x @ x.T) / x.shape[1]
    eps = torch.finfo(torch.float64).eps
    assert torch.allclose(k.nngp, want, rtol=0, atol=8 * eps * want.abs().max())
    assert net(x).shape == (4, 4)  # the finite face concatenates 3 + 1 features


def test_fan_in_sum_of_different_widths():
    net = nk.serial(nk.FanOut(2), nk.parallel(nk.Dense(3), nk.Dense(4)), nk.FanInSum())
    pattern = r"^serial\[2\] \(FanInSum\): branches have incompatible feature shapes \[\(3,\), \(4,\)\]"
    with pytest.raises(nk.NtkitError, match=pattern):
        net.kernel(_x())
    with pytest.raises(nk.NtkitError, match=r"^FanInSum: branches have incompatible shapes \[\(2, 3\), \(2, 4\)\]$"):
        nk.FanInSum()([torch.zeros(2, 3), torch.zeros(2, 4)])


def test_gaussian_with_infinite_moments():
    net = nk.serial(nk.Dense(2, W_std=3.0), nk.Gaussian(b=1.0))
    pattern = r"^serial\[1\] \(Gaussian\): E\[phi\(u\)\^2\] is infinite: input variance [0-9.]+ >= 1/\(4b\) = 0\.25"
    with pytest.raises(nk.NtkitError, match=pattern):
        net.kernel(_x())


# -- the finite face ----------------------------------------------------------------------------


def test_dense_forward_with_the_wrong_number_of_features():
    pattern = r"^Dense: input has shape \(5, 4\); expected \(N, 3, \.\.\.\)$"
    with pytest.raises(nk.NtkitError, match=pattern):
        nk.Dense(2, in_features=3)(torch.zeros(5, 4))
    lazy = nk.Dense(2)
    assert lazy(torch.zeros(5, 3)).shape == (5, 2)  # built for 3 features at the first call
    with pytest.raises(nk.NtkitError, match=pattern):
        lazy(torch.zeros(5, 4))
    with pytest.raises(nk.NtkitError, match=r"^Dense: input has shape \(3,\)"):
        nk.Dense(2, in_features=3)(torch.zeros(3))


def test_forward_error_inside_a_network_names_the_layer():
    net = nk.serial(nk.Dense(2, in_features=3), nk.ReLU(), nk.Dense(1, in_features=3))
    pattern = r"^serial\[2\] \(Dense\): input has shape \(5, 2\); expected \(N, 3, \.\.\.\)"
    with pytest.raises(nk.NtkitError, match=pattern):
        net(torch.zeros(5, 3))
