"""Convolutional networks at infinite width (CNN-GP, CNTK): Conv, pooling and Flatten on images.

Every layer and option is checked against ntkit's own finite CNNs by the Monte Carlo contract
(``ntkit.testing.check_layer``: the average empirical NNGP and NTK of many wide random CNNs
agrees with the analytic kernel within a Bonferroni bound on its sampling error), with negative
controls showing the same check rejects plausible bugs; then the exact identities (1x1 images
give the MLP, circular padding with global pooling is translation invariant), the finite face
against torch's own convolutions, the engine's blocks, and bad input.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import pytest
import torch

import ntkit as nk
from ntkit.layers import _engine
from ntkit.testing import check_layer, check_monte_carlo

from zoo import ACTIVATIONS

#: Channels of the finite CNNs. The Monte Carlo average of S = 32 draws has a finite-width
#: bias O(1/width) and a standard error O(1/sqrt(S width)) (relative); their ratio
#: sqrt(S / width) ~ 0.35 at width 256 (for unit coefficients) is far below the ~4.7 standard
#: errors of the Bonferroni threshold, while a 15% error in a kernel still exceeds it.
WIDTH = 256


def images(seed: int = 0, n: int = 4, channels: int = 2, spatial=(4, 4)) -> torch.Tensor:
    """n random images, the last one a copy of the first (correlation 1 between examples)."""
    x = torch.randn(n, channels, *spatial, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[-1] = x[0]
    return x


def conv(filter_shape=(3, 3), width: int = WIDTH, **options) -> nk.Conv:
    options.setdefault("W_std", 1.3)
    options.setdefault("b_std", 0.2)
    return nk.Conv(width, filter_shape, **options)


def readout(**options) -> nk.Dense:
    return nk.Dense(WIDTH, **{"W_std": 1.1, "b_std": 0.1, **options})


def residual(block: nk.Layer) -> nk.Layer:
    return nk.serial(nk.FanOut(2), nk.parallel(block, nk.Identity()), nk.FanInSum())


def cnn(*layers: nk.Layer, **readout_options) -> nk.Layer:
    """``layers`` followed by a wide fully-connected readout."""
    return nk.serial(*layers, readout(**readout_options))


class Case(NamedTuple):
    name: str
    build: Callable[[], nk.Layer]
    spatial: tuple = (4, 4)


CASES = [
    Case("Conv same + GlobalAvgPool", lambda: cnn(conv(padding="same"), nk.ReLU(), nk.GlobalAvgPool())),
    Case(
        "Conv valid stride 2 + Flatten",
        lambda: cnn(conv(strides=2), nk.ReLU(), conv((2, 2), padding="same"), nk.Erf(), nk.Flatten()),
        (5, 5),
    ),
    Case(
        "Conv circular (2, 3) no bias, strides (1, 2)",
        lambda: cnn(conv((2, 3), padding="circular", strides=(1, 2), b_std=None), nk.Abs(), nk.GlobalAvgPool()),
    ),
    Case(
        "Conv standard parameterization",
        lambda: cnn(
            conv(padding="same", parameterization="standard"),
            nk.ReLU(),
            conv((2, 2), parameterization="standard"),
            nk.GELU(),
            nk.GlobalAvgPool(),
            parameterization="standard",
        ),
    ),
    Case(
        "AvgPool same stride 1",
        lambda: cnn(conv(padding="same"), nk.ReLU(), nk.AvgPool((3, 3), strides=1, padding="same"), nk.Flatten()),
    ),
    Case(
        "AvgPool valid, then Conv",
        lambda: cnn(
            conv(padding="circular"), nk.ReLU(), nk.AvgPool((2, 2)), conv((2, 2), padding="same"), nk.Erf(),
            nk.GlobalAvgPool(),
        ),
    ),
    Case(
        "SumPool circular + GlobalSumPool",
        lambda: cnn(
            conv((2, 2), padding="same", W_std=0.8),
            nk.ReLU(),
            nk.SumPool((2, 2), strides=(1, 2), padding="circular"),
            nk.GlobalSumPool(),
            W_std=0.3,
        ),
    ),
    Case(
        "Dense on images (1x1 conv)",
        lambda: cnn(
            conv(padding="same"), nk.ReLU(), nk.Dense(WIDTH, 1.2, 0.1), nk.Sin(1.1, 0.9, 0.3), nk.GlobalAvgPool()
        ),
    ),
    Case(
        "Residual block",
        lambda: cnn(
            conv(padding="same"),
            residual(nk.serial(nk.ReLU(), conv((2, 2), padding="same", W_std=1.0))),
            nk.ReLU(),
            nk.AvgPool((2, 2)),
            nk.Flatten(),
        ),
    ),
    Case(
        "Dropout on images",
        lambda: cnn(conv(padding="same"), nk.ReLU(), nk.Dropout(0.3), conv((2, 2)), nk.Erf(), nk.GlobalAvgPool()),
    ),
    Case(
        "Conv1D same stride 2 + AvgPool1D",
        lambda: cnn(
            conv(3, padding="same", strides=2), nk.ReLU(), conv(2, padding="circular"), nk.Erf(), nk.AvgPool(2),
            nk.Flatten(),
        ),
        (7,),
    ),
    Case(
        "Conv1D valid + GlobalSumPool",
        lambda: cnn(
            conv(3, b_std=None), nk.LeakyReLU(0.2), nk.SumPool(2, strides=1, padding="same"), nk.GlobalSumPool(),
            W_std=0.4,
        ),
        (6,),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_conv_contract_with_monte_carlo(case):
    check_layer(case.build(), images(spatial=case.spatial), wrap=False)


@pytest.mark.parametrize("entry", ACTIVATIONS, ids=lambda e: e.name)
def test_every_activation_on_spatial_kernels(entry):
    """Each activation of the zoo inside a CNN with pooling: symmetry, PSD, float32, shapes."""
    activation = entry.build()[1]
    pool = nk.AvgPool((2, 2), strides=1)
    net = nk.serial(conv((2, 2), width=8, padding="same"), activation, pool, nk.Flatten(), nk.Dense(8))
    check_layer(net, images(n=3, spatial=(2, 3)), wrap=False, monte_carlo=False, accuracy=entry.accuracy)


# -- negative controls ------------------------------------------------------------------------


def test_monte_carlo_rejects_a_perturbed_cnn_kernel():
    """The check that passes on the true CNN kernel (test_conv_contract_with_monte_carlo) fails
    when the NNGP is 15% too small or the NTK 15% too large (see test_contract's negative
    control for the power of 32 draws)."""
    net, x = CASES[0].build().double(), images()
    k = net.kernel(x)
    for wrong in (k.replace(nngp=k.nngp * 0.85), k.replace(ntk=k.ntk * 1.15)):
        with pytest.raises(AssertionError, match="disagrees"):
            check_monte_carlo(net, x, wrong)


@pytest.mark.parametrize(
    "wrong",
    [
        # zero padding where the finite network wraps around
        lambda: nk.serial(conv(padding="same"), nk.ReLU(), nk.GlobalAvgPool(), readout()),
        # the p = p' diagonal only (Flatten) where pooling needs the cross-position covariances
        lambda: nk.serial(conv(padding="circular"), nk.ReLU(), nk.Flatten(), readout()),
    ],
    ids=["same-for-circular", "flatten-for-pool"],
)
def test_monte_carlo_rejects_plausible_cnn_bugs(wrong):
    net = nk.serial(conv(padding="circular"), nk.ReLU(), nk.GlobalAvgPool(), readout()).double()
    x = images()
    with pytest.raises(AssertionError, match="disagrees"):
        check_monte_carlo(net, x, wrong().kernel(x))


# -- exact identities ------------------------------------------------------------------------

# Both sides compute the same formulas, in a different order or memory layout (vectorised and
# scalar lanes of arccos and erf may differ by an ulp): a few ulps per layer, 64 eps in all.
ROUND_OFF = 64 * torch.finfo(torch.float64).eps


@pytest.mark.parametrize(
    "filter_shape, padding", [((1, 1), "valid"), ((1, 1), "same"), ((3, 3), "circular"), ((1, 3), "circular")]
)
def test_cnn_on_1x1_images_is_the_mlp(filter_shape, padding):
    """On 1x1 images a 1x1 conv is a Dense layer, and so is any circular conv (every tap wraps
    onto the one pixel, and the kernel averages the taps)."""
    x = torch.randn(4, 5, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cnn = nk.serial(
        nk.Conv(8, filter_shape, padding=padding, W_std=1.3, b_std=0.2), nk.ReLU(),
        nk.Conv(8, filter_shape, padding=padding, W_std=1.1, b_std=0.1), nk.Erf(),
        nk.GlobalAvgPool(), nk.Dense(3, 1.2, 0.3),
    )
    mlp = nk.serial(nk.Dense(8, 1.3, 0.2), nk.ReLU(), nk.Dense(8, 1.1, 0.1), nk.Erf(), nk.Dense(3, 1.2, 0.3))
    v = x.flatten(1)
    for a, b in ((cnn.kernel(x), mlp.kernel(v)), (cnn.kernel(x[:3], x[1:]), mlp.kernel(v[:3], v[1:]))):
        for field in ("nngp", "ntk"):
            expected = getattr(b, field)
            assert torch.allclose(getattr(a, field), expected, rtol=0, atol=ROUND_OFF * float(expected.abs().max()))
    # the comparison can fail: zero padding loses the outer taps of a 3x3 filter
    zero_padded = nk.serial(
        nk.Conv(8, (3, 3), padding="same", W_std=1.3, b_std=0.2), nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(3)
    )
    reference = nk.serial(nk.Dense(8, 1.3, 0.2), nk.ReLU(), nk.Dense(3))
    assert not torch.allclose(zero_padded.kernel(x).nngp, reference.kernel(x.flatten(1)).nngp, rtol=1e-3)


def _translation_net(padding: str) -> nk.Layer:
    return nk.serial(
        nk.Conv(8, (3, 3), padding=padding, W_std=1.3, b_std=0.2), nk.ReLU(),
        nk.Conv(8, (2, 3), padding=padding, W_std=1.2, b_std=0.1), nk.Erf(),
        nk.AvgPool((2, 2), strides=1, padding=padding), nk.GlobalAvgPool(), nk.Dense(3),
    )


@pytest.mark.parametrize("shift", [(1, 0), (2, 3), (0, 4), (-1, 2)])
def test_circular_padding_with_global_pooling_is_translation_invariant(shift):
    x = images(n=3, spatial=(5, 5))
    x1, x2 = x[:2], x[1:]
    net = _translation_net("circular")
    k = net.kernel(x1, x2)
    moved = net.kernel(torch.roll(x1, shift, (2, 3)), x2)
    both = net.kernel(torch.roll(x1, shift, (2, 3)), torch.roll(x2, shift, (2, 3)))
    for other in (moved, both):
        for field in ("nngp", "ntk"):
            a, b = getattr(other, field), getattr(k, field)
            assert torch.allclose(a, b, rtol=0, atol=ROUND_OFF * float(b.abs().max()))
    # negative control: with zero padding the borders break the invariance
    zero = _translation_net("same")
    assert not torch.allclose(zero.kernel(torch.roll(x1, shift, (2, 3)), x2).nngp, zero.kernel(x1, x2).nngp, rtol=1e-4)


# -- the finite face against torch ----------------------------------------------------------


def test_finite_conv_matches_torch_convolutions():
    x = images(n=2, channels=3, spatial=(6, 5))
    for padding, mode, torch_padding in (("same", "zeros", "same"), ("circular", "circular", 1), ("valid", "zeros", 0)):
        layer = nk.Conv(4, (3, 3), padding=padding, W_std=1.0, b_std=1.0, parameterization="standard").double()
        layer(x)
        reference = torch.nn.Conv2d(3, 4, (3, 3), padding=torch_padding, padding_mode=mode).double()
        with torch.no_grad():
            reference.weight.copy_(layer.weight)
            reference.bias.copy_(layer.bias)
            assert torch.allclose(layer(x), reference(x), rtol=1e-12, atol=1e-12), padding
    pooled = nk.AvgPool((2, 2), strides=(1, 2))(x)
    assert torch.allclose(pooled, torch.nn.functional.avg_pool2d(x, (2, 2), (1, 2)), rtol=1e-14)
    assert torch.allclose(nk.SumPool((3, 2))(x), torch.nn.functional.avg_pool2d(x, (3, 2)) * 6, rtol=1e-14)
    same = torch.nn.functional.avg_pool2d(x, 3, 1, padding=1, count_include_pad=True)
    assert torch.allclose(nk.AvgPool((3, 3), strides=1, padding="same")(x), same, rtol=1e-14)
    # 6 x 5 with stride 2: ceil(6 / 2) = 3 rows need 1 padded row (after), 3 columns need 2 (1 + 1)
    wrapped = torch.nn.functional.pad(x, (1, 1, 0, 1), mode="circular")
    circular = torch.nn.functional.avg_pool2d(wrapped, 3, 2)
    assert torch.allclose(nk.AvgPool((3, 3), strides=2, padding="circular")(x), circular, rtol=1e-14)
    assert torch.allclose(nk.GlobalSumPool()(x), x.sum((2, 3)), rtol=1e-14)
    strided = nk.Conv(4, (3, 3), strides=2, padding="same").double()
    assert strided(x).shape == (2, 4, 3, 3)  # ceil(6 / 2), ceil(5 / 2)


# -- the engine's blocks ------------------------------------------------------------------------


def test_blocks_under_a_memory_budget_give_the_same_kernel(monkeypatch):
    net = CASES[8].build()
    x = images(n=7, spatial=(4, 4))
    whole = net.kernel(x, block_size=512)
    cross = net.kernel(x[:5], x[2:], block_size=512)
    # 16 positions: 256 covariances per pair; a budget of 1024 entries leaves 2 x 2 pairs a block
    monkeypatch.setattr(_engine, "SPATIAL_BUDGET", 1024)
    assert _engine._block_side(x, "full", 1 << 40) == 2
    blocked, blocked_cross = net.kernel(x), net.kernel(x[:5], x[2:])
    for a, b in ((blocked, whole), (blocked_cross, cross)):
        for field in ("nngp", "ntk"):
            assert torch.allclose(getattr(a, field), getattr(b, field), rtol=0, atol=1e-15)
    assert torch.equal(blocked.nngp, blocked.nngp.T) and torch.equal(blocked.nngp.diagonal(), blocked.var1)


def test_spatial_outputs_are_assembled_with_their_layout():
    """A network without pooling returns the full (N1, N2, *S, *S) kernel, blocks mirrored."""
    net = nk.serial(nk.Conv(8, (3, 3), padding="same", W_std=1.3, b_std=0.2), nk.ReLU(), nk.Conv(8, (2, 2)))
    x = images(n=5, spatial=(4, 4))
    whole = net.kernel(x)
    blocked = net.kernel(x, block_size=2)
    assert whole.nngp.shape == (5, 5, 3, 3, 3, 3) and whole.var1.shape == (5, 3, 3, 3, 3)
    assert torch.allclose(blocked.nngp, whole.nngp, rtol=0, atol=1e-15)
    assert torch.equal(blocked.nngp, blocked.nngp.permute(1, 0, 4, 5, 2, 3))
    index = torch.arange(5)
    assert torch.equal(whole.nngp[index, index], whole.var1)
    assert _engine._block_side(torch.zeros(1, 3, 32, 32), "full", 1 << 40) == 2  # 1M covariances per pair


def test_mirrored_blocks_cost_least():
    """x2 = x1: the block side that computes the fewest pairs, a block's fixed cost counted. An
    off-diagonal block pays for its examples' variances; a diagonal block has them free."""
    # brute force: pairs of images each block computes, blocks of side s from 0; with halves, a
    # diagonal block computes its pairs i <= j only
    def brute(n, s, halves):
        starts = range(0, n, s)
        sizes = [min(s, n - i) for i in starts]
        diagonal = sum(m * (m + 1) // 2 if halves else m * m for m in sizes)
        return diagonal + sum(sizes[a] * sizes[b] + sizes[a] + sizes[b]
                              for a in range(len(sizes)) for b in range(a + 1, len(sizes)))
    for n in range(1, 40):
        for s in range(1, n + 1):
            for halves in (False, True):
                assert _engine._pairs_computed(n, s, halves) == brute(n, s, halves), (n, s, halves)
    side = lambda n, hw, device="cpu", layout="full", cap=512, halves=False: _engine._mirrored_side(
        n, torch.zeros(n, 3, hw, hw, device=device), layout, cap, halves)
    # a network whose diagonal blocks cost half their pairs: the fewest pairs in one block
    assert side(32, 8, halves=True) == 32 and side(32, 8) == 11 and side(64, 8, cap=32, halves=True) == 32
    # 32x32 images: pairs cost far more than a block; N=2 in one block (4 pairs, not 1 + 1 + 3)
    assert side(2, 32) == 2 and side(32, 32) == 8
    assert side(32, 32, cap=4) == 4
    # 8x8: a block costs as much as 16 pairs, so blocks are larger
    assert side(8, 8) == 8 and side(64, 8) == 16
    # on a GPU (here the meta device, which the rule treats alike) blocks keep >= 16M covariances
    assert side(64, 8, "meta") == 64 and side(8, 32, "meta") == 4
    assert side(64, 8, "meta", "diagonal") == 512  # 64 covariances per pair: one block


def test_networks_that_halve_their_diagonal_blocks():
    """A network halves a diagonal block when every layer up to a global pooling or Flatten is in
    a fused, mirrored run: output planes of at most 16x16, or a first run chained into the next."""
    from ntkit.layers._fusion import mirrors_same_inputs

    def conv(size=3):
        return [nk.Conv(4, (size, size), padding="same"), nk.ReLU()]

    myrtle = nk.serial(*conv(), *conv(), nk.AvgPool((2, 2)), *conv(), nk.GlobalAvgPool(), nk.Dense(1))
    assert mirrors_same_inputs(myrtle.layers, (3, 32, 32)) and mirrors_same_inputs(myrtle.layers, (3, 8, 8))
    unchained = nk.serial(*conv(5), *conv(5), nk.GlobalAvgPool())  # 5x5: the first run is not chained
    assert mirrors_same_inputs(unchained.layers, (3, 16, 16))
    assert not mirrors_same_inputs(unchained.layers, (3, 32, 32))  # its 32x32 planes are not mirrored
    not_fused = nk.serial(nk.Conv(4, (3, 3), padding="same"), nk.Erf(), nk.GlobalAvgPool())
    assert not mirrors_same_inputs(not_fused.layers, (3, 8, 8))
    x = images(n=6, spatial=(8, 8))
    assert _engine._halves_diagonal_blocks(myrtle, x, "full")
    assert not _engine._halves_diagonal_blocks(myrtle, x, "diagonal")
    assert not _engine._halves_diagonal_blocks(myrtle, x.requires_grad_(), "full")  # torch maps


# -- bad input --------------------------------------------------------------------------------


def test_image_smaller_than_a_valid_filter():
    net = nk.serial(nk.Conv(8, (3, 3)), nk.ReLU(), nk.Conv(8, (5, 5)), nk.GlobalAvgPool())
    pattern = re.escape(
        "serial[2] (Conv): the image has spatial shape (2, 2), smaller than the Conv filter window (5, 5) "
        "with padding='valid'; use padding='same' or a smaller window"
    )
    with pytest.raises(nk.NtkitError, match=pattern):
        net.kernel(images(spatial=(4, 4)))
    with pytest.raises(nk.NtkitError, match=pattern):
        net(images(spatial=(4, 4)).float())


def test_channel_mismatch_between_x1_and_x2():
    net = nk.serial(nk.Conv(8, (3, 3), padding="same"), nk.GlobalAvgPool())
    message = "x1 has 2 channels (axis 1) but x2 has 3 (shapes (4, 2, 4, 4) and (4, 3, 4, 4))"
    with pytest.raises(nk.NtkitError, match=re.escape(message)):
        net.kernel(images(), images(channels=3))
    with pytest.raises(nk.NtkitError, match=re.escape("x1 and x2 have different spatial shapes")):
        net.kernel(images(), images(spatial=(5, 4)))


def test_channels_last_data_is_named():
    nhwc = torch.randn(2, 8, 8, 3, dtype=torch.float64)
    hint = re.escape("(the last axis has 3 entries, like channels: if the data is NHWC/NLC, move channels to axis 1")
    built = nk.serial(nk.Conv(8, (3, 3), padding="same", in_channels=3), nk.GlobalAvgPool())
    where = r"serial\[0\] \(Conv\): "
    with pytest.raises(nk.NtkitError, match=where + "its input has 8 channels, but it was built for 3 " + hint):
        built.kernel(nhwc)
    shape = r"input has shape \(2, 8, 8, 3\); expected 3 channels on axis 1 "
    with pytest.raises(nk.NtkitError, match=where + shape + hint):
        built(nhwc)
    lazy = nk.serial(nk.Conv(8, (5, 5)), nk.GlobalAvgPool())
    with pytest.raises(nk.NtkitError, match=r"smaller than the Conv filter window \(5, 5\).*" + hint):
        lazy.kernel(nhwc)


def test_layers_that_need_images_say_so():
    x = torch.randn(3, 4, dtype=torch.float64)
    cases = [
        (
            nk.serial(nk.Dense(8), nk.Conv(8, (3, 3))), x,
            "serial[1] (Conv): a filter of shape (3, 3) needs inputs (N, C, H, W); got features of shape (8,)",
        ),
        (
            nk.serial(nk.Dense(8), nk.GlobalAvgPool()), x,
            "serial[1] (GlobalAvgPool): GlobalAvgPool needs inputs (N, C, L) or (N, C, H, W)",
        ),
        (
            nk.serial(nk.AvgPool((2, 2)), nk.Conv(8, 2)), torch.randn(3, 2, 6),
            "serial[0] (AvgPool): AvgPool needs inputs (N, C, H, W); got features of shape (2, 6)",
        ),
        (
            nk.serial(nk.Conv(8, (3, 3)), nk.GlobalAvgPool()), torch.zeros(2, 1, 3, 3, 3),
            "x1 has shape (2, 1, 3, 3, 3); expected (N, features), (N, C, L) or (N, C, H, W)",
        ),
    ]
    for net, inputs, message in cases:
        with pytest.raises(nk.NtkitError, match="^" + re.escape(message)):
            net.kernel(inputs)
    with pytest.raises(nk.NtkitError, match=re.escape("Conv: padding must be one of ('valid', 'same', 'circular')")):
        nk.Conv(8, (3, 3), padding="full")
    with pytest.raises(nk.NtkitError, match=re.escape("Conv: strides must be a positive int or a tuple of 2")):
        nk.Conv(8, (3, 3), strides=(1, 0))
