"""Window sums along one axis, or two paired axes, in one compiled pass.

The kernel map of a convolution sums the covariance over filter taps shifted alike in both
images, :math:`y[q, q'] = \\sum_j t[s q + j - lo,\\, s q' + j - lo]` (Novak et al. 2019, eq. 8;
Arora et al. 2019, eq. 7); pooling sums along one axis, :math:`y[q] = \\sum_j t[s q + j - lo]`.
:func:`ntkit.layers._spatial.window_sum` makes one pass over the block per tap; here each output
row is accumulated while its source rows are in cache. The taps are those of
``ntkit.layers._spatial.filter_taps``, in the same order, so the sums are the same to the last bit
(only additions, no fused operations): ``first_tap`` is copied (or zeros, when it is -1) and
the others are added, each to the outputs ``target, ..., target + count - 1`` from the
inputs ``source, source + stride, ...``.

Layouts: one axis, ``t`` (A, X, C) -> (A, Y, C); paired axes, ``t`` (A, X, B, X, C) ->
(A, Y, B, Y, C), with C the product of the axes after the (last) summed one.
"""

from __future__ import annotations

import numpy as np
from numba import uint64

from . import run_rows
from ._jit import jit

_plain = {"fastmath": False}  # additions only, in the torch order: no contraction to worry about


@jit(inline="always", **_plain)
def _add_row(out, o, src, s, count, stride, inner, first):
    """``out[o + u*inner + c] (+)= src[s + u*stride*inner + c]`` for u < count, c < inner.

    Unsigned offsets: NumPy's wraparound of negative indices would otherwise keep the loops
    from vectorizing (and slicing here would cost reference counting per row)."""
    o, s = uint64(o), uint64(s)
    if stride == 1:
        n = uint64(count * inner)
        if first:
            for e in range(n):
                out[o + e] = src[s + e]
        else:
            for e in range(n):
                out[o + e] += src[s + e]
        return
    for u in range(count):
        to, at = o + uint64(u * inner), s + uint64(u * stride * inner)
        if first:
            for c in range(uint64(inner)):
                out[to + c] = src[at + c]
        else:
            for c in range(uint64(inner)):
                out[to + c] += src[at + c]


@jit(inline="always", **_plain)
def _tap(rank, first_tap):
    """The tap added ``rank``-th: the covering one first (copied), then the others in order;
    -1 where there is none (no covering tap, or the covering tap's own turn)."""
    if rank == 0:
        return first_tap
    return -1 if rank - 1 == first_tap else rank - 1


@jit(**_plain)
def sum_one_axis(start, stop, t, out, sources, targets, counts, stride, first_tap):
    """One axis, rows a in ``[start, stop)``: ``t`` (A, X, C), ``out`` (A, Y, C) zero-filled when
    ``first_tap`` is -1."""
    _, x_size, inner = t.shape
    y_size = out.shape[1]
    src, dst = t.reshape(-1), out.reshape(-1)
    for a in range(start, stop):
        for rank in range(len(sources) + 1):
            tap = _tap(rank, first_tap)
            if tap < 0:
                continue
            o = (a * y_size + targets[tap]) * inner
            s = (a * x_size + sources[tap]) * inner
            _add_row(dst, o, src, s, counts[tap], stride, inner, rank == 0)


@jit(**_plain)
def sum_paired_axes(start, stop, t, out, sources, targets, counts, stride, first_tap):
    """Paired axes, rows (a, y) in ``[start, stop)``: ``t`` (A, X, B, X, C), ``out`` (A, Y, B, Y, C)
    zero-filled when ``first_tap`` is -1.

    Output row (a, y, b) takes, for each tap j with y in its target range, the input row
    (a, source_j + stride (y - target_j), b) summed into positions y' of the same tap."""
    _, x_size, b_size, _, inner = t.shape
    y_size = out.shape[1]
    src, dst = t.reshape(-1), out.reshape(-1)
    for row in range(start, stop):
        a, y = row // y_size, row % y_size
        for b in range(b_size):
            for rank in range(len(sources) + 1):
                tap = _tap(rank, first_tap)
                if tap < 0:
                    continue
                u = y - targets[tap]
                if u < 0 or u >= counts[tap]:
                    continue
                x = sources[tap] + stride * u
                o = (((a * y_size + y) * b_size + b) * y_size + targets[tap]) * inner
                s = (((a * x_size + x) * b_size + b) * x_size + sources[tap]) * inner
                _add_row(dst, o, src, s, counts[tap], stride, inner, rank == 0)


def run(t: np.ndarray, paired: bool, out_size: int, taps: list, stride: int, first_tap: int) -> np.ndarray:
    """The window sum of ``t`` laid out as above; ``taps`` is a list of (source, target, count)."""
    sources, targets, counts = (np.array([tap[i] for tap in taps], dtype=np.int64) for i in range(3))
    if paired:
        a, _, b, _, c = t.shape
        shape = (a, out_size, b, out_size, c)
    else:
        a, _, c = t.shape
        shape = (a, out_size, c)
    out = np.zeros(shape, t.dtype) if first_tap < 0 else np.empty(shape, t.dtype)
    rows, per_row = (shape[0] * out_size, shape[2] * out_size * shape[4]) if paired else (shape[0], out_size * shape[2])
    run_rows(sum_paired_axes if paired else sum_one_axis, rows, t, out, sources, targets, counts, stride, first_tap, cost=per_row)
    return out
