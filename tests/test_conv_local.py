"""ConvLocal, the locally connected layer (unshared weights), at infinite width and finite width.

The kernel map is checked against ntkit's own finite locally connected networks by the Monte
Carlo contract (``ntkit.testing.check_layer``), with a negative control (the Conv kernel, which
keeps the covariances between positions, is rejected); then the exact identity of Novak et al.
(2019): a network ending in Flatten has the same kernels with ConvLocal as with Conv,
but not one ending in global pooling; the kernel's layout (Conv's map at p = p', zero
elsewhere); the finite face against an explicit loop; and bad input.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import pytest
import torch

import ntkit as nk
from ntkit.testing import check_layer, check_monte_carlo

#: Channels of the finite networks (see tests/test_conv.py for the choice). A ConvLocal has a
#: filter per position, so the layers before the readout are kept at HIDDEN channels or half
#: that, to bound the Jacobians; the finite-width bias O(1/64) is still far below the
#: Bonferroni threshold (sqrt(32/64) = 0.7 standard errors for unit coefficients).
WIDTH = 256
HIDDEN = 128


def images(seed: int = 0, n: int = 4, channels: int = 2, spatial=(4, 4)) -> torch.Tensor:
    """n random images, the last one a copy of the first (correlation 1 between examples)."""
    x = torch.randn(n, channels, *spatial, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[-1] = x[0]
    return x


def local(filter_shape=(3, 3), width: int = WIDTH, **options) -> nk.ConvLocal:
    options.setdefault("W_std", 1.3)
    options.setdefault("b_std", 0.2)
    return nk.ConvLocal(width, filter_shape, **options)


def conv(filter_shape=(3, 3), width: int = WIDTH, **options) -> nk.Conv:
    options.setdefault("W_std", 1.3)
    options.setdefault("b_std", 0.2)
    return nk.Conv(width, filter_shape, **options)


def cnn(*layers: nk.Layer, **readout_options) -> nk.Layer:
    """``layers`` followed by a wide fully-connected readout."""
    return nk.serial(*layers, nk.Dense(WIDTH, **{"W_std": 1.1, "b_std": 0.1, **readout_options}))


class Case(NamedTuple):
    name: str
    build: Callable[[], nk.Layer]
    spatial: tuple = (4, 4)


CASES = [
    Case("same + GlobalAvgPool", lambda: cnn(local(padding="same", width=HIDDEN), nk.ReLU(), nk.GlobalAvgPool())),
    Case(
        "valid stride 2 after Conv, Flatten",
        lambda: cnn(
            conv((2, 2), width=HIDDEN // 2, padding="same"), nk.ReLU(),
            local((2, 2), width=HIDDEN // 2, strides=2), nk.Erf(), nk.Flatten(),
        ),
    ),
    Case(
        "circular (2, 3) no bias strides (1, 2), standard parameterization",
        lambda: cnn(
            local((2, 3), padding="circular", strides=(1, 2), b_std=None, parameterization="standard"),
            nk.Abs(),
            nk.GlobalAvgPool(),
            parameterization="standard",
        ),
    ),
    Case(
        "1D same stride 2 standard after circular Conv1D, AvgPool",
        lambda: cnn(
            conv(3, width=HIDDEN // 2, padding="circular"), nk.ReLU(),
            local(2, width=HIDDEN, padding="same", strides=2, parameterization="standard"), nk.Erf(),
            nk.AvgPool(2, strides=1), nk.Flatten(),
        ),
        (7,),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_conv_local_contract_with_monte_carlo(case):
    check_layer(case.build(), images(n=3, spatial=case.spatial), wrap=False)


def test_monte_carlo_rejects_the_conv_kernel_for_a_locally_connected_network():
    """Forgetting that filters at different positions are independent (the Conv kernel, with
    its covariances between positions) is caught once global pooling sums those covariances."""
    net, x = CASES[0].build().double(), images(n=3)
    wrong = cnn(conv(padding="same"), nk.ReLU(), nk.GlobalAvgPool()).kernel(x)
    with pytest.raises(AssertionError, match="disagrees"):  # max |z| ~ 12 in the NTK against 4.6
        check_monte_carlo(net, x, wrong, n_samples=16)


# -- exact identities ------------------------------------------------------------------------

ROUND_OFF = 64 * torch.finfo(torch.float64).eps


def _two_layer(layer, head: nk.Layer, padding: str, strides, parameterization: str) -> nk.Layer:
    return nk.serial(
        layer(8, (3, 2), strides=strides, padding=padding, W_std=1.3, b_std=0.2, parameterization=parameterization),
        nk.ReLU(),
        layer(8, (2, 2), padding="same", W_std=1.1, b_std=0.1, parameterization=parameterization),
        nk.Erf(),
        head,
        nk.Dense(3, 1.2, 0.1, parameterization=parameterization),
    )


@pytest.mark.parametrize(
    "padding, strides, parameterization",
    [("valid", 1, "ntk"), ("same", 2, "ntk"), ("circular", (1, 2), "standard"), ("same", 1, "standard")],
)
def test_flatten_cnn_has_the_kernels_of_the_locally_connected_network(padding, strides, parameterization):
    """Novak et al. 2019: without pooling, the CNN-GP is the LCN-GP (the variances at
    each position only ever read variances), for the NNGP and the NTK; with global average
    pooling the CNN's covariances between positions count and the two differ."""
    x = images(n=4, spatial=(5, 5))
    for x1, x2 in ((x, None), (x[:3], x[1:])):
        a = _two_layer(nk.Conv, nk.Flatten(), padding, strides, parameterization).kernel(x1, x2)
        b = _two_layer(nk.ConvLocal, nk.Flatten(), padding, strides, parameterization).kernel(x1, x2)
        for field in ("nngp", "ntk"):
            expected = getattr(a, field)
            assert torch.allclose(getattr(b, field), expected, rtol=0, atol=ROUND_OFF * float(expected.abs().max()))
        pooled = _two_layer(nk.Conv, nk.GlobalAvgPool(), padding, strides, parameterization).kernel(x1, x2)
        local_pooled = _two_layer(nk.ConvLocal, nk.GlobalAvgPool(), padding, strides, parameterization).kernel(x1, x2)
        for field in ("nngp", "ntk"):
            assert not torch.allclose(getattr(local_pooled, field), getattr(pooled, field), rtol=1e-3)


@pytest.mark.parametrize("padding", ["valid", "same", "circular"])
def test_kernel_is_the_conv_map_at_one_position_and_zero_between_positions(padding):
    x = images(n=3, spatial=(5, 4))
    front = nk.serial(conv((2, 2), width=8, padding="same"), nk.ReLU())
    for parameterization in ("ntk", "standard"):
        options = dict(strides=(2, 1), padding=padding, parameterization=parameterization)
        shared = nk.serial(front, conv((3, 2), width=8, **options)).kernel(x, x[1:])
        unshared = nk.serial(front, local((3, 2), width=8, **options)).kernel(x, x[1:])
        spatial = tuple(unshared.feature_shape[1:])
        assert unshared.nngp.shape == shared.nngp.shape == (3, 2, *spatial, *spatial)
        mask = torch.eye(spatial[0] * spatial[1], dtype=torch.bool).reshape(*spatial, *spatial)
        for field in ("nngp", "ntk", "var1", "var2"):
            a, b = getattr(unshared, field), getattr(shared, field)
            assert torch.equal(a[..., ~mask], torch.zeros_like(a[..., ~mask])), field
            assert torch.allclose(a[..., mask], b[..., mask], rtol=0, atol=ROUND_OFF * float(b.abs().max())), field
            assert not torch.allclose(a, b)  # the Conv's covariances between positions are not zero


# -- the finite face against an explicit loop ------------------------------------------------


def _loop(layer: nk.ConvLocal, x: torch.Tensor) -> torch.Tensor:
    """``z_o(p) = sum_{c, t} W_{o, (c, t), p} x_pad[c, s p + t] + b_o(p)``, one position at a time."""
    n = len(layer.filter_shape)
    spatial = x.shape[2:]
    out = [-(-size // s) if layer.padding != "valid" else (size - f) // s + 1
           for size, f, s in zip(spatial, layer.filter_shape, layer.strides)]
    lo = [max((o - 1) * s + f - size, 0) // 2 for o, size, f, s in zip(out, spatial, layer.filter_shape, layer.strides)]
    if layer.parameterization == "ntk":
        weight = layer.weight * layer.W_std / layer.fan_in**0.5
        bias = None if layer.bias is None else layer.bias * layer.b_std
    else:
        weight, bias = layer.weight, layer.bias
    y = x.new_zeros(x.shape[0], layer.out_channels, *out)
    positions = [(i,) for i in range(out[0])] if n == 1 else [(i, j) for i in range(out[0]) for j in range(out[1])]
    for flat, p in enumerate(positions):
        taps = [(t,) for t in range(layer.filter_shape[0])] if n == 1 else [
            (a, b) for a in range(layer.filter_shape[0]) for b in range(layer.filter_shape[1])
        ]
        patch = x.new_zeros(x.shape[0], x.shape[1], len(taps))
        for k, t in enumerate(taps):
            source = [s * q + dt - low for s, q, dt, low in zip(layer.strides, p, t, lo)]
            if layer.padding == "circular":
                source = [v % size for v, size in zip(source, spatial)]
            elif not all(0 <= v < size for v, size in zip(source, spatial)):
                continue  # a zero from the padding
            patch[:, :, k] = x[(slice(None), slice(None), *source)]
        y[(slice(None), slice(None), *p)] = patch.flatten(1) @ weight[:, :, flat].T
        if bias is not None:
            y[(slice(None), slice(None), *p)] += bias[(slice(None), *p)]
    return y


@pytest.mark.parametrize(
    "filter_shape, strides, padding, parameterization, b_std",
    [
        ((3, 3), 1, "same", "ntk", 0.5),
        ((3, 2), (2, 1), "valid", "standard", 0.5),
        ((2, 3), 2, "circular", "ntk", None),
        ((3, 3), 2, "same", "standard", None),
        (3, 2, "circular", "standard", 0.5),
        (2, 1, "same", "ntk", 0.5),
    ],
)
def test_finite_conv_local_matches_an_explicit_loop(filter_shape, strides, padding, parameterization, b_std):
    spatial = (7,) if isinstance(filter_shape, int) else (6, 5)
    x = images(n=2, channels=3, spatial=spatial)
    layer = nk.ConvLocal(4, filter_shape, strides, padding, 1.4, b_std, parameterization).double()
    y = layer(x)
    positions = y[0, 0].numel()
    taps = filter_shape if isinstance(filter_shape, int) else filter_shape[0] * filter_shape[1]
    assert layer.weight.shape == (4, 3 * taps, positions)
    assert layer.bias is None if b_std is None else layer.bias.shape == y.shape[1:]
    with torch.no_grad():
        assert torch.allclose(y, _loop(layer, x), rtol=1e-12, atol=1e-12)
    # the filters are not shared: changing one position's filter changes that position only
    with torch.no_grad():
        layer.weight[:, :, 0] += 1.0
    changed = (layer(x) - y).abs().flatten(2).amax((0, 1)) > 0
    assert changed.tolist() == [True] + [False] * (positions - 1)


def test_in_channels_given_and_lazy_agree():
    """Either way the parameters are drawn at the first forward pass, when the positions are known."""
    x = images(n=2, channels=3)
    outputs = []
    for in_channels in (3, None):
        layer = nk.ConvLocal(4, (2, 2), padding="same", b_std=0.1, in_channels=in_channels).double()
        torch.manual_seed(0)
        outputs.append(layer(x))
        assert layer.in_channels == 3 and layer.weight.shape == (4, 12, 16) and layer.bias.shape == (4, 4, 4)
    assert torch.equal(*outputs)


# -- bad input --------------------------------------------------------------------------------


def test_another_image_size_after_the_first_forward():
    net = nk.serial(nk.ConvLocal(8, (3, 3), padding="same"), nk.GlobalAvgPool())
    net(images(spatial=(4, 4)).float())
    message = re.escape(
        "serial[0] (ConvLocal): an input of spatial shape (5, 4) gives output positions (5, 4), but its "
        "per-position weights were made for 16 positions (ConvLocal shares no weights across positions"
    )
    with pytest.raises(nk.NtkitError, match=message):
        net(images(spatial=(5, 4)).float())
    with pytest.raises(nk.NtkitError, match=message):
        net.kernel(images(spatial=(5, 4)))
    net.kernel(images(spatial=(4, 4)))  # the size it was made for


def test_bad_conv_local_inputs_and_arguments():
    built = nk.serial(nk.ConvLocal(8, (3, 3), padding="same", in_channels=2), nk.GlobalAvgPool())
    where = "serial[0] (ConvLocal): "
    with pytest.raises(nk.NtkitError, match=re.escape(where + "its input has 3 channels, but it was built for 2")):
        built.kernel(images(channels=3))
    channels = where + "input has shape (4, 3, 4, 4); expected 2 channels on axis 1"
    with pytest.raises(nk.NtkitError, match=re.escape(channels)):
        built(images(channels=3))
    small = nk.serial(nk.ConvLocal(8, (5, 5)), nk.GlobalAvgPool())
    too_small = re.escape(
        "serial[0] (ConvLocal): the image has spatial shape (4, 4), smaller than the ConvLocal filter window (5, 5) "
        "with padding='valid'; use padding='same' or a smaller window"
    )
    with pytest.raises(nk.NtkitError, match=too_small):
        small.kernel(images())
    with pytest.raises(nk.NtkitError, match=too_small):
        small(images())
    vectors = nk.serial(nk.Dense(4), nk.ConvLocal(8, (3, 3)))
    rank = "serial[1] (ConvLocal): a filter of shape (3, 3) needs inputs (N, C, H, W)"
    with pytest.raises(nk.NtkitError, match=re.escape(rank)):
        vectors.kernel(torch.zeros(2, 6))
    arguments = [
        (lambda: nk.ConvLocal(0, (3, 3)), "ConvLocal: out_channels must be a positive integer, got 0"),
        (lambda: nk.ConvLocal(8, (3, 3, 3)), "ConvLocal: filter_shape must have 1 or 2 entries, got (3, 3, 3)"),
        (lambda: nk.ConvLocal(8, (3, 3), padding="full"), "ConvLocal: padding must be one of ('valid', 'same', "),
        (lambda: nk.ConvLocal(8, (3, 3), strides=(1, 0)), "ConvLocal: strides must be a positive int or a tuple of 2"),
        (lambda: nk.ConvLocal(8, (3, 3), in_channels=0), "ConvLocal: in_channels must be a positive integer, got 0"),
        (lambda: nk.ConvLocal(8, (3, 3), parameterization="mup"), "ConvLocal: parameterization must be"),
    ]
    for build, message in arguments:
        with pytest.raises(nk.NtkitError, match="^" + re.escape(message)):
            build()
