"""Compiled CPU loops (Numba) for the kernel maps whose torch form is bound by memory traffic.

A kernel map written as whole-tensor torch operations reads and writes its block once per
operation: the ReLU dual of a Myrtle CNN's 32x32 covariances makes about 30 such passes, and
the finite-width pair recursions a few hundred. A compiled loop makes one, keeping each
entry's temporaries in registers. This module holds what those loops share:

* :func:`enabled` / :func:`run_rows` (here): when to take the compiled path (CPU tensors of
  float32/float64 that autograd does not track, Numba importable, not switched off) and how
  to spread a loop over torch's threads; the wrappers that hand torch tensors to the loops;
* ``_jit``: ``jit``, ``numba.njit`` with the options the loops need, and a vectorizing
  ``arccos``;
* one module per compiled kernel map.

The modules that import Numba are imported on first use, so ``import ntkit`` stays fast;
without Numba (or with ``NTKIT_DISABLE_NUMBA=1``) every kernel map runs its torch form, which
is also the one used on GPUs and the reference the compiled loops are tested against.
"""

from __future__ import annotations

import math
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _numba():
    if os.environ.get("NTKIT_DISABLE_NUMBA", "") not in ("", "0"):
        return None
    try:
        import numba
    except ImportError:
        return None
    return numba


def enabled(*tensors: torch.Tensor) -> bool:
    """Whether the compiled path applies: Numba is there and every tensor is a CPU float32/64
    that autograd does not track (compiled loops have no backward)."""
    tracked = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return _numba() is not None and not tracked and all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors
    )


def _array(t: torch.Tensor):
    """A C-contiguous NumPy view (a copy only when ``t`` is not contiguous)."""
    return t.detach().contiguous().numpy()


def relu_duals(rows: tuple, ntk: torch.Tensor | None, a: float, b: float, shape: torch.Size):
    """``ABReLU(a, b)``'s K' and Theta' (None without ``ntk``) for ``GaussianPair.rows``, both
    of the given shape; see :mod:`ntkit._compiled.relu`."""
    from . import relu

    cov, var1, var2, mode, exact = rows
    flat_ntk = None if ntk is None else _array(ntk.reshape(cov.shape))
    out, out_ntk = relu.run(_array(cov), flat_ntk, _array(var1), _array(var2), relu.MODES[mode], exact, a, b)
    return torch.from_numpy(out).reshape(shape), None if ntk is None else torch.from_numpy(out_ntk).reshape(shape)


#: CPU work buffers of at least this many bytes are mapped on huge pages where Linux allows it.
HUGE_BUFFER = 4 << 20


def cpu_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)`` on the CPU; a large buffer is mapped anew and advised
    to use huge pages (Linux's transparent huge pages, in their "madvise" mode too). A fresh
    buffer's first writes fault its pages in one by one: a kernel map's output block takes them
    on every block, and with 4 KB pages that cost as much as a pass over the block (32 MB:
    8 ms to fill a fresh buffer, 3 ms on huge pages, 1.4 ms to fill it again)."""
    size = math.prod(shape) * dtype.itemsize
    if size < HUGE_BUFFER or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype)
    mapped = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapped.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(mapped, dtype=dtype).reshape(shape)  # the tensor keeps the map alive


#: The least work (entries of a simple kernel map) worth giving a thread of its own.
MIN_SHARE = 1 << 16


def run_rows(kernel, rows: int, *args, cost: int = 1) -> None:
    """``kernel(start, stop, *args)`` over rows ``[0, rows)``, split across torch's threads.

    The compiled loops are serial and release the GIL; this runs them on a small pool of
    ``torch.get_num_threads()`` Python threads, each on a contiguous share of the rows. (Not
    Numba's own ``prange``: its OpenMP layer shares the OpenMP runtime with torch, and setting
    Numba's thread count changes torch's.) ``cost`` is the work per row in entries: problems
    under ~64k entries run on the calling thread, where a pool would cost more than it saves.
    """
    threads = max(1, min(torch.get_num_threads(), rows, rows * cost // MIN_SHARE))
    if threads == 1:
        kernel(0, rows, *args)
        return
    bounds = [rows * t // threads for t in range(threads + 1)]
    pool = _pool(threads, os.getpid())
    futures = [pool.submit(kernel, bounds[t], bounds[t + 1], *args) for t in range(1, threads)]
    kernel(bounds[0], bounds[1], *args)
    for future in futures:
        future.result()


@lru_cache(maxsize=4)
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """The worker threads; one pool per process (``pid``): a forked child has none of its
    parent's threads, and would wait forever on the parent's pool."""
    return ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="ntkit-compiled")


def window_sum(t: torch.Tensor, axes: tuple, out: int, taps: list, first_tap: int) -> torch.Tensor:
    """``ntkit.layers._spatial._summed`` for one axis or two paired axes, compiled: ``taps`` are
    its (source, target) slices, ``first_tap`` the covering one (-1: none); see
    :mod:`ntkit._compiled.window`."""
    from . import window

    shape = tuple(t.shape)
    first, last = axes[0], axes[-1]
    outer, inner = math.prod(shape[:first]), math.prod(shape[last + 1 :])
    if len(axes) == 1:
        view = (outer, shape[first], inner)
    else:
        view = (outer, shape[first], math.prod(shape[first + 1 : last]), shape[last], inner)
    stride = taps[0][0].step or 1
    plain = [(source.start, target.start, target.stop - target.start) for source, target in taps]
    summed = window.run(_array(t.reshape(view)), len(axes) == 2, out, plain, stride, first_tap)
    result = list(shape)
    for axis in axes:
        result[axis] = out
    return torch.from_numpy(summed).reshape(result)


def affine_(nngp: torch.Tensor, ntk: torch.Tensor | None, window: int, w2: float, b2: float | None,
            ntk_parameterization: bool, fan_in: int) -> None:
    """``ntkit.layers.dense.affine_kernels`` of window sums, in place on contiguous tensors; see
    :mod:`ntkit._compiled.affine`."""
    from . import affine

    flat = nngp.view(-1).numpy()
    flat_ntk = flat[:0] if ntk is None else ntk.view(-1).numpy()
    run_rows(
        affine.affine_in_place, flat.size, flat, flat_ntk, float(window), w2, 0.0 if b2 is None else b2, b2 is not None,
        ntk_parameterization, float(fan_in),
    )


def conv_kernels(nngp: torch.Tensor, ntk: torch.Tensor | None, out_size: tuple, taps: list, strides: tuple,
                 window: int, w2: float, b2: float | None, ntk_parameterization: bool, fan_in: int):
    """A 2-D ``Conv``'s K' and Theta' (None without ``ntk``) on (..., H, W, H, W) tensors in one
    pass, ``out_size`` = (H', W'); ``taps`` holds a list of (source, target, count) per axis. See
    :mod:`ntkit._compiled.conv`."""
    from . import conv

    *batch, height, width, _, _ = nngp.shape
    out_h, out_w = out_size
    view = (math.prod(batch), height, width, height, width)
    out = cpu_empty((view[0], out_h, out_w, out_h, out_w), nngp.dtype)
    out_ntk = cpu_empty(out.shape, out.dtype) if ntk is not None else out.new_empty((0, 0, 0, 0, 0))
    source_ntk = _array(ntk.reshape(view)) if ntk is not None else out_ntk.numpy()
    tables = _tap_tables(taps)
    run_rows(
        conv.conv_kernels, view[0] * out_h * out_w, _array(nngp.reshape(view)), source_ntk, out.numpy(),
        out_ntk.numpy(), tables[0], tables[1], strides[0], strides[1], float(window), w2, 0.0 if b2 is None else b2,
        b2 is not None, ntk_parameterization, float(fan_in), cost=out_h * out_w * window,
    )
    shape = (*batch, out_h, out_w, out_h, out_w)
    return out.reshape(shape), None if ntk is None else out_ntk.reshape(shape)


def conv_padded_planes(padded: torch.Tensor, padded_ntk: torch.Tensor | None, out_size: tuple, w2: float,
                       b2: float | None, ntk_parameterization: bool, fan_in: int):
    """``conv_kernels`` of a 3x3 filter with unit strides from inputs already padded on their four
    position axes (..., H_p, W_p, H_p, W_p); see ``conv.conv_padded_planes``."""
    from . import conv

    *batch, hp, wp, _, _ = padded.shape
    out_h, out_w = out_size
    view = (math.prod(batch), hp, wp, hp, wp)
    out = cpu_empty((view[0], out_h, out_w, out_h, out_w), padded.dtype)
    out_ntk = cpu_empty(out.shape, out.dtype) if padded_ntk is not None else out.new_empty((0, 0, 0, 0, 0))
    source_ntk = _array(padded_ntk.reshape(view)) if padded_ntk is not None else out_ntk.numpy()
    run_rows(
        conv.conv_padded_planes, view[0] * out_h * out_w, _array(padded.reshape(view)), source_ntk, out.numpy(),
        out_ntk.numpy(), 9.0, w2, 0.0 if b2 is None else b2, b2 is not None, ntk_parameterization, float(fan_in),
        cost=9 * out_h * wp,
    )
    shape = (*batch, out_h, out_w, out_h, out_w)
    return out.reshape(shape), None if padded_ntk is None else out_ntk.reshape(shape)


def _tap_tables(taps: list):
    """Per-axis (source, target, count) lists as (T, 3) int64 arrays."""
    import numpy as np

    return [np.array(axis_taps, dtype=np.int64).reshape(-1, 3) for axis_taps in taps]


def conv_variances(variances: torch.Tensor, taps: list, strides: tuple, out_size: tuple, window: int, w2: float,
                   b2: float | None, ntk_parameterization: bool, fan_in: int) -> torch.Tensor:
    """A 2-D ``Conv``'s output variance at each position (N, H', W') from the input variances
    (N, H, W), prepared like the pairs' inputs; see ``conv.conv_variances``."""
    from . import conv

    out = torch.empty((variances.shape[0], *out_size), dtype=variances.dtype)
    taps_h, taps_w = _tap_tables(taps)
    conv.conv_variances(_array(variances), taps_h, taps_w, strides[0], strides[1], out.numpy(), float(window), w2,
                        0.0 if b2 is None else b2, b2 is not None, ntk_parameterization, float(fan_in))
    return out


def conv_relu_pool(src: torch.Tensor, src_ntk: torch.Tensor | None, conv: dict, pairs: tuple, variances: tuple,
                   relu: tuple, pool: dict, blocks: int, zero_ntk: bool = False, in_place: bool = False,
                   chain: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A 2-D ``Conv``, an ``ABReLU`` and a window pooling (or none) in one pass over a block of
    pairs ``src`` (A, H, W, H, W), laid out for ``conv.conv_plane``; see :mod:`ntkit._compiled.fused`.

    * ``conv``: ``taps``, ``strides``, ``layout`` ("taps", "padded" or "identity", see
      ``conv.conv_plane``), ``out_size`` (H', W'), ``window``, ``w2``, ``b2`` (None: no bias),
      ``ntk_parameterization``, ``fan_in``;
    * ``pairs``: ``(source, first, second, same, place, mirror)``, the pairs to compute, and
      ``variances``: ``(var1, var2)``, the Conv outputs' variances (N, H' W') that ``first`` and
      ``second`` index;
    * ``relu``: ``(a, b)``; ``pool``: ``pooling`` (False: none, and ``taps`` of one tap covering
      each axis, unit ``strides``, ``scale`` 1), ``taps``, ``strides``, ``out_size`` (Y_h, Y_w) and
      ``scale`` (the squared pooling scale); ``blocks``: the number of pairs of the output;
    * ``zero_ntk``: the input NTK is zero (``src_ntk`` None) and the output's is wanted;
    * ``in_place``: K is written over ``src``, a contiguous temporary of the caller's ("identity"
      layout, no pooling, each pair written once: a plane is read whole before it is written),
      which saves a fresh block of memory;
    * ``chain``: ``(conv, relu, variances)`` of a network's first Conv and ReLU, as above, when
      ``src`` holds that Conv's window sums ("identity" layout) and the two runs go as one
      ("zero-padded" layout only; ``zero_ntk``: the NTK is wanted).

    Returns K and Theta (None without an NTK), (blocks, Y_h, Y_w, Y_h, Y_w)."""
    import numpy as np

    from . import fused
    from .conv import IDENTITY, PADDED, TAPS
    from .relu import roots

    a, b = relu
    shape = (blocks, *pool["out_size"], *pool["out_size"])
    out = src.view(shape) if in_place else cpu_empty(shape, src.dtype)
    with_ntk = src_ntk is not None or zero_ntk
    out_ntk = cpu_empty(shape, src.dtype) if with_ntk else out.new_empty((0, 0, 0, 0, 0))
    source_ntk = _array(src_ntk) if src_ntk is not None else out.new_empty((0, 0, 0, 0, 0)).numpy()
    pool_h, pool_w = _tap_tables(pool["taps"])
    (var1, std1, inv1), (var2, std2, inv2) = ((v, *roots(v)) for v in (_array(t) for t in variances))
    source, first, second, same, place, mirror = (_array(t) for t in pairs)
    conv_h, conv_w = conv["out_size"]
    b2 = conv["b2"]
    if conv["layout"] == "zero-padded":
        if chain is None:
            empty = np.empty((0, 0), src.numpy().dtype)
            mapped = (False, (1.0, 1.0, 0.0, False, True, 1.0), (0.0, 0.0), (empty,) * 6)
        else:
            first_conv, (a1, b1), first_vars = chain
            first_b2 = first_conv["b2"]
            mapped = (
                True,
                (float(first_conv["window"]), first_conv["w2"], 0.0 if first_b2 is None else first_b2,
                 first_b2 is not None, first_conv["ntk_parameterization"], float(first_conv["fan_in"])),
                ((a1 * a1 + b1 * b1) / 2, (a1 - b1) ** 2 / (2 * math.pi)),
                tuple(x for v in (_array(t) for t in first_vars) for x in (v, *roots(v))),
            )
        run_rows(
            fused.conv_relu_pool_padded, len(source) * pool["out_size"][0], _array(src), source_ntk, zero_ntk,
            *conv["padding"], conv_h, conv_w, float(conv["window"]), conv["w2"], 0.0 if b2 is None else b2,
            b2 is not None, conv["ntk_parameterization"], float(conv["fan_in"]), source, first, second, same, place,
            mirror, var1, std1, inv1, var2, std2, inv2, (a * a + b * b) / 2, (a - b) ** 2 / (2 * math.pi),
            pool["pooling"], pool_h, pool_w, *pool["strides"], float(pool["scale"]), out.numpy(), out_ntk.numpy(),
            *mapped, cost=conv_h * conv_w * conv_w * 16,
        )
        return out, out_ntk if with_ntk else None
    taps_h, taps_w = _tap_tables(conv["taps"])
    layout = {"taps": TAPS, "padded": PADDED, "identity": IDENTITY}[conv["layout"]]
    planes = len(source) * pool["out_size"][0] * pool["out_size"][1]
    run_rows(
        fused.conv_relu_pool, planes, _array(src), source_ntk, zero_ntk, taps_h, taps_w, *conv["strides"], layout,
        conv_h, conv_w, float(conv["window"]), conv["w2"], 0.0 if b2 is None else b2, b2 is not None,
        conv["ntk_parameterization"], float(conv["fan_in"]), source, first, second, same, place, mirror,
        var1, std1, inv1, var2, std2, inv2, (a * a + b * b) / 2, (a - b) ** 2 / (2 * math.pi), pool["pooling"],
        pool_h, pool_w, *pool["strides"], float(pool["scale"]), out.numpy(), out_ntk.numpy(), cost=conv_h * conv_w * 16,
    )
    return out, out_ntk if with_ntk else None
