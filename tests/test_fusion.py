"""Kernel maps computed by other routes than layer by layer, against layer by layer.

* ``Conv.map_inputs``: a network's first Conv from dot products of image patches, against its
  ``kernel_map`` of the inputs' kernel (``Layer.map_inputs``);
* fused runs (``ntkit.layers._fusion``: Conv, ReLU-family activation, pooling in one compiled
  pass), against the same layers one by one (themselves checked against the torch forms in
  ``test_compiled.py``, and those against Monte Carlo and closed forms);
* the variances of a same-inputs block of images, taken from its self-pairs, against the
  variances computed on their own.

The routes make the same operations, except for the order of additions (patches summed over
channels and taps at once; pooled planes summed first image's window outside): results agree to
a few ulps of the largest entry, and exactly where the operations are the same.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import ntkit as nk
import ntkit.layers.combinators as combinators
from ntkit import _compiled
from ntkit._errors import NtkitError
from ntkit._inputs import Inputs, find_twins

from test_spatial_layout import conv, images  # images with a twin and an antipodal pair

RTOL = 1e-13  # a few ulps of the largest entry, after a handful of layers

needs_numba = pytest.mark.skipif(_compiled._numba() is None, reason="Numba is not installed")


def _relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _assert_close(fast, plain, rtol=RTOL):
    assert fast.spatial_layout == plain.spatial_layout and fast.feature_shape == plain.feature_shape
    for field in ("nngp", "ntk", "var1", "var2"):
        a, b = getattr(fast, field), getattr(plain, field)
        assert (a is None) == (b is None), field
        if b is not None:
            assert a.shape == b.shape, field
            assert _relative(a, b) <= rtol, field


# -- the first Conv, from patches -----------------------------------------------------------


@pytest.mark.parametrize(
    "filter_shape, strides, padding",
    [((3, 3), 1, "same"), ((2, 3), 2, "valid"), ((3, 2), (1, 2), "circular"), ((3,), 1, "same"), ((2,), 2, "circular")],
)
@pytest.mark.parametrize("parameterization, b_std", [("ntk", 0.2), ("standard", 0.2), ("ntk", None), ("standard", None)])
@pytest.mark.parametrize("second", [False, True])
@pytest.mark.parametrize("with_ntk", [True, False])
def test_first_conv_from_patches(filter_shape, strides, padding, parameterization, b_std, second, with_ntk):
    spatial = (7, 6) if len(filter_shape) == 2 else (9,)
    layer = conv(filter_shape, strides=strides, padding=padding, parameterization=parameterization, b_std=b_std)
    x1 = images(spatial=spatial, seed=1)
    x2 = torch.cat([images(n=3, spatial=spatial, seed=2), -x1[:1]]) if second else x1
    same = not second
    inputs = Inputs(x1, x2, same, with_ntk, find_twins(x1, x2, same), "full")
    fast, plain = layer.map_inputs(inputs), layer.kernel_map(inputs.kernel())
    _assert_close(fast, plain)
    # twins are exactly the variances, as in input_kernel: x1[-1] = x1[0], and without a bias
    # antipodal inputs (x1[-2] = -x1[1]; x2[-1] = -x1[0]) exactly minus them
    if same:
        assert torch.equal(fast.nngp[-1, 0], fast.var1[0])
    if b_std is None:
        antipodal, variance = (fast.nngp[0, -1], fast.var1[0]) if second else (fast.nngp[-2, 1], fast.var1[1])
        assert torch.equal(antipodal, -variance)


def test_first_conv_of_a_subclass_maps_the_inputs_kernel():
    """ConvLocal (unshared weights) subclasses Conv: its first layer keeps its own kernel map."""
    x = images(n=3, spatial=(5, 4))
    local = nk.serial(nk.ConvLocal(8, (3, 3), padding="same", W_std=1.3, b_std=0.2), nk.ReLU(), nk.GlobalAvgPool())
    direct = nk.serial(nk.ReLU(), nk.GlobalAvgPool())
    inputs = Inputs(x, x, True, True, find_twins(x, x, True), "full")
    expected = direct.kernel_map(local[0].kernel_map(inputs.kernel()))
    _assert_close(local.kernel(x), expected)


def test_first_conv_from_patches_under_autograd():
    """The patch products are differentiable, and gradients agree with the inputs' kernel route."""
    x = images(n=3, spatial=(5, 4)).requires_grad_(True)
    layer = conv(padding="same")
    inputs = Inputs(x, x, True, True, None, "full")
    fast = layer.map_inputs(inputs).ntk.sum()
    plain = layer.kernel_map(inputs.kernel()).ntk.sum()
    (grad_fast,), (grad_plain,) = torch.autograd.grad(fast, x), torch.autograd.grad(plain, x)
    assert _relative(grad_fast, grad_plain) <= RTOL


def test_first_conv_errors_name_the_layer():
    net = nk.serial(conv((3, 3)), nk.ReLU(), nk.GlobalAvgPool())
    with pytest.raises(NtkitError, match=r"serial\[0\] \(Conv\).*filter"):
        net.kernel(images(spatial=(2, 5)))
    built = nk.serial(nk.Conv(4, (3, 3), padding="same", in_channels=3), nk.ReLU(), nk.GlobalAvgPool())
    with pytest.raises(NtkitError, match=r"serial\[0\] \(Conv\).*4 channels, but it was built for 3"):
        built.kernel(images(channels=4))


# -- fused runs ----------------------------------------------------------------------------


@pytest.fixture
def layer_by_layer(monkeypatch):
    """Run a block with fusion switched off; ``runs`` counts the fused runs of the fast route
    (their lengths; a run that starts a network, from its inputs, as a negative length: with the
    run after it when the two go as one)."""
    runs = []
    fused = {name: getattr(combinators, name) for name in ("fused_map", "fused_inputs_map")}

    def counted(name, sign):
        def map_(*args):
            result = fused[name](*args)
            if result is not None:
                runs.append(sign * result[1])
            return result

        return map_

    def fuse():
        monkeypatch.setattr(combinators, "fused_map", counted("fused_map", 1))
        monkeypatch.setattr(combinators, "fused_inputs_map", counted("fused_inputs_map", -1))

    def run(fn):
        for name in fused:
            monkeypatch.setattr(combinators, name, lambda *args: None)
        try:
            return fn()
        finally:
            fuse()

    fuse()
    run.runs = runs
    return run


NETWORKS = {
    # name: (network, spatial shape, layers per fused run when fusion applies)
    "Myrtle-like": (lambda: nk.serial(
        conv(padding="same", b_std=None), nk.ReLU(), conv(padding="same"), nk.ReLU(), nk.AvgPool((2, 2)),
        conv(padding="same"), nk.LeakyReLU(0.2), nk.GlobalAvgPool(), nk.Dense(3)), (6, 6), [-5, 2]),
    "large images, no pooling after": (lambda: nk.serial(
        conv(padding="same"), nk.ReLU(), conv(padding="same", W_std=1.5), nk.Abs(), conv((2, 3), strides=2), nk.ReLU(),
        nk.GlobalAvgPool()), (17, 16), [-4, 2]),
    "strides, valid, circular, SumPool": (lambda: nk.serial(
        conv(strides=2), nk.Abs(), conv((2, 3), padding="circular"), nk.ReLU(),
        nk.SumPool((2, 2), strides=1, padding="same"), nk.Flatten(), nk.Dense(2)), (7, 6), [-2, 3]),
    "standard, edge-normalised pooling": (lambda: nk.serial(
        conv(parameterization="standard"), nk.ReLU(), conv(parameterization="standard", padding="circular"),
        nk.ReLU(), nk.AvgPool((3, 2), strides=(2, 1), padding="same", count_include_pad=False),
        nk.GlobalSumPool(), nk.Dense(2, parameterization="standard")), (7, 5), [-2, 2]),
    "overlapping windows, valid": (lambda: nk.serial(
        conv(padding="same"), nk.ReLU(), conv(padding="same"), nk.ReLU(), nk.AvgPool((3, 3), strides=2),
        nk.GlobalAvgPool()), (9, 8), [-5]),
    "two runs as one: standard, valid, ABReLU": (lambda: nk.serial(
        conv(parameterization="standard"), nk.ABReLU(-0.4, 1.2), conv(parameterization="standard", b_std=None),
        nk.ReLU(), nk.AvgPool((2, 2)), nk.GlobalAvgPool(), nk.Dense(2, parameterization="standard")), (8, 7), [-5]),
    "pooling in the first run, 1-D after": (lambda: nk.serial(
        conv((2, 2), strides=(1, 2), b_std=None), nk.ReLU(), nk.AvgPool((2, 1)), nk.Flatten(), nk.Dense(3), nk.ReLU()),
        (7, 6), [-3]),
}


@needs_numba
@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("second", ["x2=None", "x2"])
@pytest.mark.parametrize("get", [("nngp", "ntk"), "nngp"])
def test_fused_runs_equal_layer_by_layer(name, second, get, layer_by_layer):
    build, spatial, expected_runs = NETWORKS[name]
    net = build()
    x1 = images(n=5, spatial=spatial, seed=1)
    x2 = torch.cat([images(n=3, spatial=spatial, seed=2), x1[:1], -x1[1:2]])
    args = (x1,) if second == "x2=None" else (x1, x2)
    fast = net.kernel(*args, get=get, block_size=2)
    assert set(layer_by_layer.runs) == set(expected_runs)
    plain = layer_by_layer(lambda: net.kernel(*args, get=get, block_size=2))
    _assert_close(fast, plain)
    if second == "x2":  # x2[3] = x1[0]: twins across batches get exactly the variances
        assert torch.equal(fast.nngp[0, 3], fast.var1[0])


@needs_numba
def test_fused_conv_and_relu_are_the_separate_maps_bit_for_bit(layer_by_layer):
    """Without pooling a fused run makes the separate maps' operations in their order."""
    net = nk.serial(conv(padding="same"), nk.ReLU(), conv(padding="same"), nk.LeakyReLU(0.1), conv((2, 2)), nk.ReLU())
    x1, x2 = images(n=4, spatial=(17, 16), seed=1), images(n=3, spatial=(17, 16), seed=2)
    for args in ((x1,), (x1, x2)):
        fast = net.kernel(*args, block_size=2)
        plain = layer_by_layer(lambda: net.kernel(*args, block_size=2))
        for field in ("nngp", "ntk", "var1", "var2"):
            assert torch.equal(getattr(fast, field), getattr(plain, field)), field
    assert set(layer_by_layer.runs) == {-4, 2}  # the first two runs as one (``_chained``)


class _OwnDual(nk.ReLU):
    """A ReLU whose dual is its own (here the same numbers by the torch form)."""

    def dual(self, pair, derivative):
        return super().dual(pair, derivative)


class _OwnPool(nk.AvgPool):
    def kernel_map(self, k):
        return super().kernel_map(k)


@needs_numba
@pytest.mark.parametrize(
    "layers, runs",
    [
        (lambda: [conv(padding="same"), _OwnDual(), nk.AvgPool((2, 2))], {-2}),  # a subclass's own dual
        (lambda: [conv(padding="same"), nk.ReLU(), _OwnPool((2, 2))], {-4}),  # a pooling's own map
        (lambda: [conv(padding="same"), nk.ReLU(), nk.AvgPool((2, 2), padding="circular")], {-4}),
        (lambda: [conv(padding="same"), nk.Erf(), nk.AvgPool((2, 2))], {-2}),  # not the ReLU family
        (lambda: [conv(padding="same"), nk.LeakyReLU(1.0), nk.AvgPool((2, 2))], {-2}),  # linear
        (lambda: [nk.AvgPool((2, 2)), conv(padding="same"), nk.ReLU()], {-3, 2}),
    ],
)
def test_fusion_applies_to_the_library_maps_only(layers, runs, layer_by_layer):
    net = nk.serial(conv(padding="same"), nk.ReLU(), *layers(), nk.GlobalAvgPool())
    x = images(n=4, spatial=(6, 6))
    fast = net.kernel(x, block_size=2)
    assert set(layer_by_layer.runs) == runs
    _assert_close(fast, layer_by_layer(lambda: net.kernel(x, block_size=2)))


@needs_numba
def test_no_fusion_under_autograd(layer_by_layer):
    net = nk.serial(conv(padding="same"), nk.ReLU(), conv(padding="same"), nk.ReLU(), nk.AvgPool((2, 2)), nk.GlobalAvgPool())
    x = images(n=3, spatial=(4, 4)).requires_grad_(True)
    net.kernel(x).nngp.sum().backward()
    assert layer_by_layer.runs == [] and x.grad is not None


@needs_numba
def test_fused_run_leaves_errors_to_its_layers():
    """An input too small for the pooling after a fused Conv and ReLU: the pooling names itself."""
    net = nk.serial(conv(padding="same"), nk.ReLU(), conv(padding="same"), nk.ReLU(), nk.AvgPool((5, 5)), nk.GlobalAvgPool())
    with pytest.raises(NtkitError, match=r"serial\[4\] \(AvgPool\)"):
        net.kernel(images(n=3, spatial=(4, 4)))


# -- variances from self-pairs -------------------------------------------------------------


@pytest.mark.parametrize("compiled", [True, False])
def test_variances_from_self_pairs_equal_variances_on_their_own(compiled, monkeypatch):
    """In a same-inputs block the output variances are its self-pairs; with x2 another batch
    they are computed on their own. The two must agree (and the same-inputs block's exactly
    with its own diagonal)."""
    if not compiled:
        monkeypatch.setenv("NTKIT_DISABLE_NUMBA", "1")
        _compiled._numba.cache_clear()
    try:
        net = nk.serial(
            conv(padding="same"), nk.ReLU(), conv(padding="same"), nk.GELU(), nk.AvgPool((2, 2)),
            conv(padding="same"), nk.LayerNorm(axis=(1, 2, 3)), nk.Erf(), nk.Dense(4), nk.ReLU(), nk.GlobalAvgPool(),
        )
        x = images(n=4, spatial=(6, 5))
        same = net.kernel(x, block_size=4)
        other = net.kernel(x, x.clone(), block_size=4)
    finally:
        monkeypatch.delenv("NTKIT_DISABLE_NUMBA", raising=False)
        _compiled._numba.cache_clear()
    assert _relative(same.var1, other.var1) <= RTOL and _relative(same.nngp, other.nngp) <= RTOL
    assert torch.equal(same.nngp.diagonal(), same.var1)


@pytest.mark.parametrize("n_layers", range(1, 7))
def test_variances_of_every_prefix_are_self_pairs(n_layers):
    """For every prefix of a network ending on images, a same-inputs kernel's variances are its
    self-pairs exactly (for the ones from self-pairs and for those set into them alike)."""
    layers = [conv(padding="same"), nk.ReLU(), nk.AvgPool((2, 2), strides=1), nk.Dropout(0.8), conv((2, 2)), nk.Tanh()]
    net = nk.serial(*layers[:n_layers])
    k = net.kernel(images(n=3, spatial=(5, 5)), block_size=3)
    for i in range(3):
        assert torch.equal(k.nngp[i, i], k.var1[i])


def test_every_combination_of_first_conv_routes_agree():
    """Patches and the inputs' kernel in a whole network, through blocks that mirror and not."""
    for padding, block_size in itertools.product(("same", "valid"), (2, 5)):
        net = nk.serial(conv(padding=padding), nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(2))
        x = images(n=5, spatial=(6, 5))
        inputs = Inputs(x, x, True, True, find_twins(x, x, True), "full")
        expected = nk.serial(nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(2)).kernel_map(net[0].kernel_map(inputs.kernel()))
        _assert_close(net.kernel(x, block_size=block_size), expected)
