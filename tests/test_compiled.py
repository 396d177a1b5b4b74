"""The compiled kernel maps (``ntkit._compiled``) against the torch forms they replace on CPUs.

The torch forms are the ones proven against Monte Carlo and closed forms elsewhere (and the
ones used on GPUs); the compiled loops must give the same kernels:

* window sums and the affine map after them make the same additions and multiplications in the
  same order, so they are equal bit for bit;
* the ReLU-family duals differ only in the arc-cosine (ours and torch's are each within 1 ulp)
  and in fused multiply-adds, a few ulps per layer. Through a handful of layers, with
  correlations of distinct inputs away from +-1 (where the next arc-cosine's slope
  1/sin(theta) would amplify them), that stays below 1e-12 of the largest entry: the tolerance.
"""

from __future__ import annotations

import math
import multiprocessing

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import _compiled
from ntkit.layers._spatial import diagonal_window_sum, window_sum

from test_spatial_layout import conv, images  # images with a twin and an antipodal pair

pytestmark = pytest.mark.skipif(_compiled._numba() is None, reason="Numba is not installed")

RTOL = 1e-12  # see the module docstring


@pytest.fixture
def torch_only(monkeypatch):
    """Run a block with the compiled loops switched off (the torch forms)."""

    def run(fn):
        monkeypatch.setenv("NTKIT_DISABLE_NUMBA", "1")
        _compiled._numba.cache_clear()
        try:
            return fn()
        finally:
            monkeypatch.delenv("NTKIT_DISABLE_NUMBA")
            _compiled._numba.cache_clear()

    return run


def test_arccos_within_one_ulp():
    from ntkit._compiled._jit import arccos

    x = np.concatenate([np.linspace(-1, 1, 200_001), [-0.5, 0.5, np.nextafter(0.5, 1), -np.nextafter(0.5, 1), 0.0, -0.0]])
    x = np.concatenate([x, 1 - np.logspace(-17, -1, 500), -1 + np.logspace(-17, -1, 500)])
    ours = np.array([arccos(v) for v in x[::97]] + [arccos(v) for v in x[-1006:]])
    exact = np.arccos(np.concatenate([x[::97], x[-1006:]]))
    ulps = np.abs(ours - exact) / np.spacing(np.maximum(exact, np.finfo(float).tiny))
    assert ulps.max() <= 1.0


@pytest.mark.parametrize("window, stride, padding", [(3, 1, "same"), (3, 1, "valid"), (2, 2, "valid"), (3, 2, "same"), (3, 1, "circular"), (4, 3, "same")])
def test_window_sums_equal_torch_bit_for_bit(window, stride, padding):
    from ntkit.layers._spatial import window_geometry

    t = torch.randn(2, 3, 7, 6, 7, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for axes in ((2, 4), (3, 5)):
        geom = window_geometry(t.shape[axes[0]], window, stride, padding)
        plain = diagonal_window_sum(t, axes, window, stride, geom, padding)
        fast = diagonal_window_sum(t, axes, window, stride, geom, padding, compiled=True)
        assert torch.equal(plain, fast)
    for axis in (2, 3, 5):
        geom = window_geometry(t.shape[axis], window, stride, padding)
        assert torch.equal(window_sum(t, axis, window, stride, geom, padding), window_sum(t, axis, window, stride, geom, padding, compiled=True))


NETWORKS = {
    "Myrtle-like, pooling": (lambda: nk.serial(
        conv(padding="same", b_std=None), nk.ReLU(), conv(padding="same"), nk.ReLU(), nk.AvgPool((2, 2)),
        conv(padding="same"), nk.LeakyReLU(0.2), nk.GlobalAvgPool(), nk.Dense(3)), (6, 6)),
    "strides, valid, circular, Abs": (lambda: nk.serial(
        conv(strides=2), nk.Abs(), conv(filter_shape=(2, 3), padding="circular"), nk.ReLU(),
        nk.AvgPool((2, 2), strides=1, padding="same", count_include_pad=False), nk.Flatten(), nk.Dense(2)), (7, 6)),
    "standard parameterization, SumPool": (lambda: nk.serial(
        conv(padding="same", parameterization="standard"), nk.ReLU(), nk.SumPool((2, 2)),
        conv(padding="same", parameterization="standard"), nk.ReLU(), nk.GlobalSumPool(), nk.Dense(2, parameterization="standard")), (5, 4)),
    "3x3 circular and valid, small images": (lambda: nk.serial(
        conv(padding="circular"), nk.ReLU(), conv(padding="valid", b_std=None), nk.Abs(), nk.GlobalAvgPool(), nk.Dense(2)), (7, 5)),
    "diagonal layout": (lambda: nk.serial(conv(padding="same"), nk.ReLU(), conv(filter_shape=(2, 2)), nk.ReLU(), nk.Flatten(), nk.Dense(2)), (6, 5)),
    "1D": (lambda: nk.serial(nk.Conv(8, (3,), padding="same", W_std=1.3), nk.ReLU(), nk.Conv(8, (2,), strides=2, W_std=1.2, b_std=0.3), nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(2)), (9,)),
}


def _relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("second", ["x2=None", "x2"])
def test_kernels_equal_torch_forms(name, second, torch_only):
    build, spatial = NETWORKS[name]
    net = build()
    x1, x2 = images(n=5, spatial=spatial, seed=1), torch.cat([images(n=3, spatial=spatial, seed=2), images(n=5, spatial=spatial, seed=1)[:1]])
    args = (x1,) if second == "x2=None" else (x1, x2)
    fast = net.kernel(*args, block_size=2)
    plain = torch_only(lambda: net.kernel(*args, block_size=2))
    assert fast.spatial_layout == plain.spatial_layout
    for field in ("nngp", "ntk", "var1", "var2"):
        assert _relative(getattr(fast, field), getattr(plain, field)) < RTOL, field
    if second == "x2=None":
        assert torch.equal(fast.nngp, fast.nngp.transpose(0, 1))  # mirrored blocks: exactly symmetric
    else:  # x2's last row is x1's first: its cross entries are exactly x1[0]'s self entries
        assert torch.equal(fast.nngp[0, -1], net.kernel(x1[:1]).nngp[0, 0])


def test_float32_close_to_float64():
    build, spatial = NETWORKS["Myrtle-like, pooling"]
    net, x = build(), images(n=4, spatial=spatial, seed=3)
    single, double = net.kernel(x, dtype=torch.float32), net.kernel(x)
    assert single.nngp.dtype == torch.float32
    # float32 round-off through ~10 maps of relative condition O(1): a few hundred eps.
    assert _relative(single.ntk.double(), double.ntk) < 300 * torch.finfo(torch.float32).eps
    assert torch.linalg.eigvalsh(single.ntk.double()).min() > -1e-5 * single.ntk.abs().max()


def test_autograd_takes_the_torch_forms():
    """Compiled loops have no backward: tensors that autograd tracks use the torch forms."""
    build, spatial = NETWORKS["Myrtle-like, pooling"]
    net = build()
    x1, x2 = images(n=3, spatial=spatial, seed=4)[:2].requires_grad_(True), images(n=3, spatial=spatial, seed=5)[:2]
    tracked = net.kernel(x1, x2).ntk
    assert tracked.requires_grad
    (grad,) = torch.autograd.grad(tracked.sum(), x1)
    step = 1e-6 * torch.randn(x1.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():  # the compiled forward, as a finite-difference check of the gradient
        assert _relative(net.kernel(x1, x2).ntk, tracked.detach()) < RTOL
        change = net.kernel(x1 + step, x2).ntk.sum() - net.kernel(x1 - step, x2).ntk.sum()
    assert math.isclose(change.item(), 2 * (grad * step).sum().item(), rel_tol=1e-5)


def _relu_block(cov):
    from ntkit._compiled import relu

    variances = np.ones((1, cov.shape[-1]))
    return relu.run(cov, None, variances, variances, relu.CROSS, False, 0.0, 1.0)[0]


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork start method")
def test_forked_child_gets_its_own_threads():
    """Loops split across threads (two here) also run in a forked child, e.g. a DataLoader worker:
    it has none of its parent's worker threads, so it must not wait on the parent's pool."""
    cov = np.random.default_rng(7).uniform(-1, 1, (1, 1, 512, 512))  # 4x the least share of a thread
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = _relu_block(cov)  # creates the parent's pool
        with multiprocessing.get_context("fork").Pool(1) as pool:
            child = pool.apply_async(_relu_block, (cov,)).get(timeout=120)
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(parent, child)


@pytest.mark.parametrize("shape", [(3, 5), (2, 1024, 1024)], ids=["small", "huge pages"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_work_buffers_are_plain_writable_tensors(shape, dtype):
    """``cpu_empty``: the shape and dtype asked for, writable, alive as long as a view of it is
    (large buffers are memory maps that the tensor keeps)."""
    buffer = _compiled.cpu_empty(shape, dtype)
    assert buffer.shape == shape and buffer.dtype == dtype and buffer.device.type == "cpu" and buffer.is_contiguous()
    view = buffer.reshape(-1)[1:]
    del buffer
    view.fill_(2.5)
    view[-1] = 1.0
    assert float(view.sum()) == 2.5 * (math.prod(shape) - 2) + 1.0
