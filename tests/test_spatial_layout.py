"""The engine's spatial layouts and memory budget.

A network without pooling that ends in ``Flatten`` is computed in the diagonal layout (equal
positions only, ``Kernel.spatial_layout == "diagonal"``); every other network uses all pairs
of positions. The two must give the same kernel: the full layout is the one checked against
Monte Carlo in ``test_conv.py``, so equality to round-off carries that proof over. Then the
memory budget: results too large for it are refused with what they would need.
"""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from ntkit.layers import _engine
from ntkit.layers.shape import Flatten

from zoo import ACTIVATIONS


def images(n=5, channels=3, spatial=(5, 4), seed=0):
    x = torch.randn(n, channels, *spatial, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[-1] = x[0]  # an example twice: correlation exactly 1 across positions of two examples
    x[-2] = -x[1]  # and an antipodal pair
    return x


def conv(filter_shape=(3, 3), **options):
    options.setdefault("W_std", 1.3)
    options.setdefault("b_std", 0.2)
    return nk.Conv(8, filter_shape, **options)


def readout():
    return nk.Dense(3, W_std=1.1, b_std=0.1)


FLATTEN_NETWORKS = {
    "valid stride 2": lambda: nk.serial(conv(strides=2), nk.ReLU(), conv((2, 2), padding="same"), nk.Erf(), nk.Flatten(), readout()),
    "circular, no bias": lambda: nk.serial(conv((2, 3), padding="circular", strides=(1, 2), b_std=None), nk.Abs(), nk.Flatten(), readout()),
    "standard parameterization": lambda: nk.serial(
        conv(padding="same", parameterization="standard"), nk.GELU(), nk.Flatten(), nk.Dense(3, parameterization="standard")
    ),
    "Dense on images, Dropout": lambda: nk.serial(
        conv(padding="same"), nk.ReLU(), nk.Dense(8, 1.2, 0.1), nk.Sin(1.1, 0.9, 0.3), nk.Dropout(0.3), nk.Flatten(), readout()
    ),
    "ConvLocal": lambda: nk.serial(nk.ConvLocal(8, (2, 2), W_std=1.2, b_std=0.3), nk.Tanh(), conv((2, 2), padding="same"), nk.Flatten(), readout()),
    "LayerNorm per position and over (C, H, W)": lambda: nk.serial(
        conv(padding="same"), nk.LayerNorm(), nk.ReLU(), conv((2, 2), padding="same"), nk.LayerNorm(0.1, axis=(1, 2, 3)),
        nk.Erf(), nk.Flatten(), readout(),
    ),
    "residual, concat, product": lambda: nk.serial(
        conv(padding="same"),
        nk.FanOut(3),
        nk.parallel(nk.serial(nk.ReLU(), conv((2, 2), padding="same")), nk.Identity(), nk.serial(nk.Erf(), conv((1, 1)))),
        nk.FanInSum(),
        nk.FanOut(2),
        nk.parallel(nk.ReLU(), nk.Erf()),
        nk.FanInConcat(),
        nk.Flatten(),
        readout(),
    ),
}


def _full_layout(net, *args, **options):
    """The kernel computed with all pairs of positions, as for a network with pooling."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Flatten, "diagonal_layout", False)
        return net.kernel(*args, **options)


def _layouts_used(net, *args, **options) -> list[str]:
    seen = []
    original = _engine.Inputs

    def spy(*a, **k):
        out = original(*a, **k)
        seen.append(out.spatial_layout)
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_engine, "Inputs", spy)
        net.kernel(*args, **options)
    return seen


@pytest.mark.parametrize("name", FLATTEN_NETWORKS)
@pytest.mark.parametrize("cross", [False, True], ids=["x2=None", "x1,x2"])
def test_diagonal_layout_equals_all_pairs_of_positions(name, cross):
    net = FLATTEN_NETWORKS[name]()
    x = images()
    args = (x[:3], x[2:]) if cross else (x,)
    assert set(_layouts_used(net, *args)) == {"diagonal"}
    fast, full = net.kernel(*args), _full_layout(net, *args)
    for field in ("nngp", "ntk", "var1", "var2"):
        a, b = getattr(fast, field), getattr(full, field)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    if not cross:
        assert torch.equal(fast.nngp.diagonal(), fast.var1)


@pytest.mark.parametrize("entry", ACTIVATIONS, ids=lambda e: e.name)
def test_every_activation_in_the_diagonal_layout(entry):
    net = nk.serial(conv(padding="same"), entry.build(), conv((2, 2)), nk.Flatten(), readout())
    x = images(spatial=(3, 3))
    fast, full = net.kernel(x), _full_layout(net, x)
    torch.testing.assert_close(fast.nngp, full.nngp, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(fast.ntk, full.ntk, rtol=1e-12, atol=1e-13)


def test_diagonal_layout_in_float32_stays_close_and_symmetric():
    net = FLATTEN_NETWORKS["valid stride 2"]()
    x = images()
    fast = net.kernel(x, dtype=torch.float32)
    reference = net.kernel(x)
    torch.testing.assert_close(fast.ntk.double(), reference.ntk, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast.nngp, fast.nngp.T)
    assert bool((torch.linalg.eigvalsh(fast.nngp.double()) > -1e-6 * fast.nngp.diagonal().max()).all())


def test_networks_with_pooling_or_image_outputs_use_all_pairs_of_positions():
    x = images()
    pooled = nk.serial(conv(padding="same"), nk.ReLU(), nk.GlobalAvgPool(), readout())
    assert set(_layouts_used(pooled, x)) == {"full"}
    no_readout = nk.serial(conv(padding="same"), nk.ReLU(), conv((1, 1)))
    k = no_readout.kernel(x)
    assert k.spatial_layout == "full" and k.nngp.shape == (5, 5, 5, 4, 5, 4)
    # one branch flattened, one still on images: the diagonal try is abandoned
    both = nk.serial(conv(padding="same"), nk.ReLU(), nk.FanOut(2), nk.parallel(nk.Flatten(), nk.Identity()))
    flat, spatial = both.kernel(x)
    assert spatial.nngp.shape == (5, 5, 5, 4, 5, 4)
    torch.testing.assert_close(flat.nngp, spatial.nngp.reshape(5, 5, 20, 20).diagonal(dim1=2, dim2=3).mean(-1))


def test_diagonal_blocks_hold_more_pairs():
    x = images(spatial=(32, 32))
    assert _engine._block_side(x, "full", 1 << 40) == 2
    assert _engine._block_side(x, "diagonal", 1 << 40) == 64


def test_blocks_of_the_diagonal_layout_give_the_same_kernel():
    net = FLATTEN_NETWORKS["residual, concat, product"]()
    x = images(n=7)
    whole = net.kernel(x)
    blocked = net.kernel(x, block_size=2)
    cross, blocked_cross = net.kernel(x[:4], x[3:]), net.kernel(x[:4], x[3:], block_size=3)
    for a, b in ((blocked, whole), (blocked_cross, cross)):
        torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-14, atol=1e-15)
    assert torch.equal(blocked.nngp, blocked.nngp.T)


def test_a_result_over_the_memory_budget_says_what_it_needs():
    net = nk.serial(conv(padding="same"), nk.ReLU())  # ends on images: (N, N, 5, 4, 5, 4)
    x = images(n=6)
    with pytest.raises(nk.NtkitError, match=r"would need .* for its result .*\(6, 6, 5, 4, 5, 4\).*tiles"):
        net.kernel(x, block_size=2, memory_budget=20_000)
    assert net.kernel(x, block_size=2, memory_budget="1MB").nngp.shape == (6, 6, 5, 4, 5, 4)


def test_a_pair_over_the_memory_budget_is_refused():
    net = nk.serial(conv(padding="same"), nk.ReLU(), nk.GlobalAvgPool(), readout())
    with pytest.raises(nk.NtkitError, match="one pair of examples needs"):
        net.kernel(images(), memory_budget="4KB")


def test_the_memory_budget_bounds_the_blocks():
    net = nk.serial(conv(padding="same"), nk.ReLU(), nk.AvgPool((2, 2)), nk.Flatten(), readout())
    x = images(n=6)
    tight = net.kernel(x, memory_budget=4 * 9 * 400 * 8 * 10)  # blocks of 3 x 3 pairs
    torch.testing.assert_close(tight.ntk, net.kernel(x).ntk, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("value", [0, -5, "lots", True])
def test_a_bad_memory_budget_is_named(value):
    with pytest.raises(nk.NtkitError, match="memory_budget"):
        nk.serial(conv(), nk.Flatten(), readout()).kernel(images(), memory_budget=value)
