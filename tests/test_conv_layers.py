"""LayerNorm on images and sequences, AvgPool without the padded cells, and a Wide-ResNet block.

Each kernel map is checked against ntkit's own finite networks by Monte Carlo: the average
empirical NNGP and NTK of many wide random networks must agree with the analytic kernel
within a Bonferroni bound on its sampling error (the statistic of
``ntkit.testing.check_monte_carlo``), and the same samples must reject a plausible bug (the
other LayerNorm axis, the other edge count) and a perturbed kernel. Then the finite faces
against torch (``layer_norm`` over the same axes, ``avg_pool2d(count_include_pad=False)``),
exact identities, and bad input.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, NamedTuple

import pytest
import torch

import ntkit as nk
from ntkit.testing import check_layer, critical_z, sample_kernels, z_scores

#: Channels of the finite networks and Monte Carlo draws. The average of S draws has a
#: finite-width bias O(1/WIDTH) and a standard error O(1/sqrt(S WIDTH)) (relative); their
#: ratio sqrt(S / WIDTH) = 0.5 for unit coefficients stays well below the ~4.5 standard errors
#: of the Bonferroni threshold for 12 entries, while the plausible bugs below move entries by
#: 10-40% (many standard errors: see the negative controls).
WIDTH = 128
SAMPLES = 32
#: Output channels whose NTK is averaged per draw: any subset is unbiased (channels are i.i.d.);
#: two halve the Jacobian's cost against four, for a standard error only ~1.3x larger.
NTK_OUTPUTS = 2

F = torch.nn.functional


def images(seed: int = 0, n: int = 3, channels: int = 2, spatial=(4, 4)) -> torch.Tensor:
    """n random images, the last one a copy of the first (correlation 1 between examples).

    Their scale grows along the last axis in even examples and shrinks in odd ones, so that
    per-position variances differ between positions and between examples: normalising per
    position or over the whole image then changes the kernel by ~20% (see the negative
    controls), where images of uniform scale would hide the difference."""
    x = torch.randn(n, channels, *spatial, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ramp = torch.linspace(0.2, 2.0, spatial[-1], dtype=torch.float64)
    x[0::2] *= ramp
    x[1::2] *= ramp.flip(0)
    x[-1] = x[0]
    return x


def conv(filter_shape=(3, 3), width: int = WIDTH, **options) -> nk.Conv:
    options.setdefault("W_std", 1.4)
    options.setdefault("b_std", 0.2)
    return nk.Conv(width, filter_shape, **options)


def readout() -> nk.Dense:
    return nk.Dense(WIDTH, 1.1, 0.1)


def wide_resnet_block(width: int, strides=1, channel_mismatch: bool = False, norm=None) -> nk.Layer:
    """The block of the neural-tangents README (``WideResnetBlock``), with BatchNorm replaced
    by ``norm`` (None: nothing): Relu, Conv 3x3 same (strided), Relu, Conv 3x3 same, plus a
    shortcut that is the identity, or a strided 1x1 Conv when the channels or strides change."""
    main = nk.serial(
        *([norm()] if norm else []),
        nk.ReLU(), conv(width=width, strides=strides, padding="same", W_std=1.5, b_std=0.1),
        nk.ReLU(), conv(width=width, padding="same", W_std=1.5, b_std=0.1),
    )
    shortcut = conv((1, 1), width=width, strides=strides, b_std=None, W_std=1.0) if channel_mismatch else nk.Identity()
    return nk.serial(nk.FanOut(2), nk.parallel(main, shortcut), nk.FanInSum())


def wide_resnet(norm=None) -> nk.Layer:
    """Conv, a strided block that changes the channels, a block with the identity shortcut,
    AvgPool over the remaining 2 x 2 positions, Flatten and Dense (the README's WideResnet)."""
    return nk.serial(
        conv(padding="same", W_std=1.0, b_std=0.1),
        wide_resnet_block(WIDTH, strides=2, channel_mismatch=True),
        wide_resnet_block(WIDTH, norm=norm),
        nk.AvgPool((2, 2)), nk.Flatten(), readout(),
    )


class Case(NamedTuple):
    name: str
    build: Callable[[], nk.Layer]
    inputs: Callable[[], torch.Tensor] = images
    #: A network with a plausible bug: its kernel must be rejected by the samples of ``build``.
    wrong: Callable[[], nk.Layer] | None = None


def _layer_norm_cnn(axis) -> Callable[[], nk.Layer]:
    return lambda: nk.serial(
        conv(padding="same"), nk.LayerNorm(axis=axis), nk.ReLU(), conv((2, 2), padding="same"), nk.GlobalAvgPool(),
        readout(),
    )


def _avg_pool_cnn(count_include_pad: bool) -> Callable[[], nk.Layer]:
    return lambda: nk.serial(
        conv(padding="same"), nk.ReLU(), nk.AvgPool((3, 3), 1, "same", count_include_pad=count_include_pad),
        nk.GlobalAvgPool(), readout(),
    )


CASES = {
    case.name: case
    for case in [
        Case("LayerNorm per position", _layer_norm_cnn(1), wrong=_layer_norm_cnn((1, 2, 3))),
        Case("LayerNorm over (C, H, W)", _layer_norm_cnn((1, 2, 3)), wrong=_layer_norm_cnn(1)),
        Case(
            "LayerNorm over (C, L) with eps, sequences",
            lambda: nk.serial(
                conv(3, padding="circular", b_std=None), nk.LayerNorm(0.5, axis=(1, 2)), nk.Erf(),
                conv(2, strides=2), nk.GlobalSumPool(), readout(),
            ),
            lambda: images(channels=3, spatial=(6,)),
        ),
        Case("AvgPool same, count_include_pad=False", _avg_pool_cnn(False), wrong=_avg_pool_cnn(True)),
        # (no plausible bug here: on the 2 x 2 positions of the second block, per-position and
        # whole-image LayerNorm differ by less than the sampling error; see the perturbed kernels)
        Case("Wide-ResNet, LayerNorm in the second block", lambda: wide_resnet(norm=lambda: nk.LayerNorm(axis=1))),
    ]
}


@functools.lru_cache(maxsize=None)
def sampled(name: str):
    """The case's network (float64), inputs, analytic kernel and Monte Carlo samples, computed
    once and shared by the positive check and the negative controls."""
    case = CASES[name]
    net, x = case.build().double(), case.inputs()
    return net, x, net.kernel(x), sample_kernels(net, x, SAMPLES, ntk_outputs=NTK_OUTPUTS)


def largest_z(samples, k) -> tuple[float, float]:
    """The statistic of ``ntkit.testing.check_monte_carlo``: the largest |z| over the upper
    triangles of the NNGP and the NTK, and its two-sided Bonferroni threshold (false alarm
    1e-4)."""
    upper = torch.triu_indices(*k.nngp.shape)
    z = torch.cat([
        z_scores(samples.nngp, samples.nngp_se, k.nngp)[upper[0], upper[1]],
        z_scores(samples.ntk, samples.ntk_se, k.ntk)[upper[0], upper[1]],
    ])
    return float(z.max()), critical_z(z.numel())


@pytest.mark.parametrize("name", list(CASES))
def test_monte_carlo_agreement(name):
    net, x, k, samples = sampled(name)
    worst, threshold = largest_z(samples, k)
    assert worst <= threshold, f"{name}: max |z| = {worst:.2f} > {threshold:.2f}\n{k.nngp}\n{samples.nngp}"
    # the rest of the layer contract: symmetry, PSD, kernel(x) == kernel(x, x), float32, shapes
    check_layer(net, x, wrap=False, monte_carlo=False)


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.wrong is not None])
def test_monte_carlo_rejects_the_plausible_bug(name):
    """The other LayerNorm axis, or counting the padded cells, is many standard errors off."""
    _, x, _, samples = sampled(name)
    worst, threshold = largest_z(samples, CASES[name].wrong().double().kernel(x))
    assert worst > threshold, f"{name}: the wrong kernel passes (max |z| = {worst:.2f} <= {threshold:.2f})"


@pytest.mark.parametrize("field, factor", [("nngp", 0.8), ("nngp", 1.2), ("ntk", 0.85), ("ntk", 1.15)])
def test_monte_carlo_rejects_a_perturbed_kernel(field, factor):
    """A Wide-ResNet kernel 15-20% off is rejected by the samples that accept the true one.

    The NNGP of this deeper network fluctuates more between draws (a standard error of ~3% of
    an entry, against ~1.5% for its NTK): 20% puts it ~6 standard errors off, 10% only ~3,
    below the threshold of ~4.5."""
    _, _, k, samples = sampled("Wide-ResNet, LayerNorm in the second block")
    worst, threshold = largest_z(samples, k.replace(**{field: getattr(k, field) * factor}))
    assert worst > threshold, f"{field} x {factor} passes (max |z| = {worst:.2f})"


# -- the finite faces against torch --------------------------------------------------------------


def test_layer_norm_forward_is_torch_layer_norm_over_the_same_axes():
    x = images(n=3, channels=5, spatial=(4, 3)) + 0.7
    per_position = F.layer_norm(x.permute(0, 2, 3, 1), (5,), eps=0.1).permute(0, 3, 1, 2)
    cases = [
        (1, per_position),
        (-3, per_position),
        ((1, 2, 3), F.layer_norm(x, (5, 4, 3), eps=0.1)),
        ((1, 2), F.layer_norm(x.permute(0, 3, 1, 2), (5, 4), eps=0.1).permute(0, 2, 3, 1)),
    ]
    for axis, expected in cases:
        torch.testing.assert_close(nk.LayerNorm(0.1, axis=axis)(x), expected, rtol=1e-13, atol=1e-13)
    sequences = images(n=3, channels=5, spatial=(6,))
    torch.testing.assert_close(nk.LayerNorm(axis=(1, 2))(sequences), F.layer_norm(sequences, (5, 6), eps=0.0))
    expected = F.layer_norm(sequences.transpose(1, 2), (5,), eps=0.0).transpose(1, 2)
    torch.testing.assert_close(nk.LayerNorm()(sequences), expected)
    # the modes differ: per position is not the same as over all features
    assert not torch.allclose(nk.LayerNorm()(x), nk.LayerNorm(axis=(1, 2, 3))(x), rtol=1e-3)


def test_avg_pool_without_padded_cells_is_torch_avg_pool():
    """Where torch pads as ntkit does (odd windows, padding (w - 1) / 2 on both sides)."""
    x = images(n=2, channels=3, spatial=(7, 5))
    for window, strides, padding in (((3, 3), 1, 1), ((3, 3), 2, 1), ((3, 1), (2, 1), (1, 0)), ((5, 3), 1, (2, 1))):
        pooled = nk.AvgPool(window, strides=strides, padding="same", count_include_pad=False)(x)
        expected = F.avg_pool2d(x, window, strides, padding=padding, count_include_pad=False)
        torch.testing.assert_close(pooled, expected, rtol=1e-14, atol=1e-15)
        counted = F.avg_pool2d(x, window, strides, padding=padding, count_include_pad=True)
        assert not torch.allclose(pooled, counted, rtol=1e-3)
    sequences = x[:, :, 0]
    pooled = nk.AvgPool(3, strides=1, padding="same", count_include_pad=False)(sequences)
    expected = F.avg_pool1d(sequences, 3, 1, padding=1, count_include_pad=False)
    torch.testing.assert_close(pooled, expected, rtol=1e-14, atol=1e-15)


# -- exact identities ----------------------------------------------------------------------------


def test_count_include_pad_changes_nothing_without_padded_cells():
    x = images(n=3, spatial=(5, 4))
    for padding, strides in (("valid", 1), ("circular", 2)):
        pools = [nk.AvgPool((3, 2), strides, padding, count_include_pad=count) for count in (True, False)]
        nets = [nk.serial(conv(width=8, padding="same"), nk.ReLU(), pool, nk.Flatten()) for pool in pools]
        kernels = [net.kernel(x) for net in nets]
        assert torch.equal(kernels[0].nngp, kernels[1].nngp) and torch.equal(kernels[0].ntk, kernels[1].ntk)
        assert torch.equal(pools[0](x), pools[1](x))


@pytest.mark.parametrize("axis", [1, (1, 2, 3)])
def test_layer_norm_on_1x1_images_is_the_vector_layer_norm(axis):
    """On 1 x 1 images both modes normalise the channels, as LayerNorm of the MLP."""
    x = torch.randn(4, 5, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cnn = nk.serial(nk.Conv(8, (1, 1), W_std=1.3, b_std=0.2), nk.LayerNorm(0.3, axis=axis), nk.ReLU(), nk.Flatten())
    mlp = nk.serial(nk.Dense(8, 1.3, 0.2), nk.LayerNorm(0.3), nk.ReLU())
    v = x.flatten(1)
    for a, b in ((cnn.kernel(x), mlp.kernel(v)), (cnn.kernel(x[:3], x[1:]), mlp.kernel(v[:3], v[1:]))):
        for field in ("nngp", "ntk"):
            expected = getattr(b, field)
            torch.testing.assert_close(getattr(a, field), expected, rtol=0, atol=1e-14 * float(expected.abs().max()))


def test_layer_norm_keeps_identical_examples_exact():
    """A copy of an example in x2 keeps correlation exactly 1 with it after LayerNorm: the
    variances and the cross-covariances go through the same operations."""
    x = images(n=3)
    for axis in (1, (1, 2, 3)):
        first, norm = conv(width=8, padding="same"), nk.LayerNorm(axis=axis)
        net = nk.serial(first, norm, nk.ReLU(), conv(width=8), nk.Flatten())
        cross, same = net.kernel(x[:1], x[:1].clone()), net.kernel(x[:1])
        assert torch.equal(cross.nngp, same.nngp) and torch.equal(cross.ntk, same.ntk)
        if axis != 1:
            continue
        diagonal = nk.serial(first, norm).kernel(x).var1.reshape(3, 16, 16).diagonal(dim1=1, dim2=2)
        assert torch.equal(diagonal, torch.ones_like(diagonal))  # eps = 0: unit variance everywhere


# -- bad input -----------------------------------------------------------------------------------


def test_layer_norm_of_a_zero_position():
    """An image zero except one pixel: with a 1x1 conv and no bias the other positions have
    variance 0, which the per-position mode cannot normalise; the whole image can be."""
    x = torch.zeros(2, 3, 3, 3, dtype=torch.float64)
    x[:, :, 1, 1] = torch.randn(2, 3, dtype=torch.float64)
    x[1] += 1.0

    def net(axis, eps=0.0):
        return nk.serial(nk.Conv(8, (1, 1)), nk.LayerNorm(eps, axis=axis), nk.ReLU(), nk.GlobalAvgPool())

    pattern = (
        r"^serial\[1\] \(LayerNorm\): its input is zero \(variance 0\) at position \(0, 0\) of an example of x1, "
        r"which cannot be normalised over axis=1; pass LayerNorm\(eps=\.\.\.\) > 0"
    )
    with pytest.raises(nk.NtkitError, match=pattern):
        net(1).kernel(x)
    with pytest.raises(nk.NtkitError, match=r"at position \(0, 0\) of an example of x2"):
        net(1).kernel(x[1:], x)
    k = net((1, 2, 3)).kernel(x)
    assert bool(torch.isfinite(k.nngp).all())
    assert bool(torch.isfinite(net(1, eps=0.1).kernel(x).nngp).all())
    with pytest.raises(nk.NtkitError, match=r"at all positions of an example of x1"):
        net((1, 2, 3)).kernel(torch.zeros(1, 3, 3, 3))


@pytest.mark.parametrize(
    "axis, shape, message",
    [
        ((1, 2, 3), (2, 3, 5), "axis=(1, 2, 3) does not fit inputs of shape (N, 8, 3) (3 axes, channels on axis 1)"),
        ((1, 2), (2, 3), "axis=(1, 2) does not fit inputs of shape (N, 8) (2 axes, channels on axis 1)"),
        ((2, 3), (2, 3, 5, 5), "axis=(2, 3) leaves out the channel axis 1 of inputs of shape (N, 8, 3, 3)"),
        ((0, 1), (2, 3, 5), "axis=(0, 1) includes the batch axis 0 of inputs of shape (N, 8, 3)"),
        ((1, -2), (2, 3, 5), "axis=(1, -2) names an axis twice"),
    ],
)
def test_layer_norm_axes_that_do_not_fit(axis, shape, message):
    first = nk.Conv(8, 3) if len(shape) == 3 else nk.Conv(8, (3, 3)) if len(shape) == 4 else nk.Dense(8)
    net = nk.serial(first, nk.LayerNorm(axis=axis), nk.Flatten())
    x = torch.randn(*shape, dtype=torch.float64)
    with pytest.raises(nk.NtkitError, match="^" + re.escape(f"serial[1] (LayerNorm): {message}")):
        net.kernel(x)
    with pytest.raises(nk.NtkitError, match="^" + re.escape(f"serial[1] (LayerNorm): {message}")):
        net(x)


def test_bad_options():
    with pytest.raises(nk.NtkitError, match=re.escape("LayerNorm: axis must be an int or a non-empty tuple of ints")):
        nk.LayerNorm(axis=())
    with pytest.raises(nk.NtkitError, match=re.escape("LayerNorm: axis must be an int or a non-empty tuple of ints")):
        nk.LayerNorm(axis="channels")
    with pytest.raises(nk.NtkitError, match=re.escape("AvgPool: count_include_pad must be True or False, got 0")):
        nk.AvgPool(2, count_include_pad=0)
