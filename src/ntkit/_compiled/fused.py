"""A 2-D convolution, the ReLU-family activation after it and a window pooling after that, if
any: their three kernel maps in one compiled pass.

Apart, each map reads and writes the whole block of covariances (NNGP and NTK, all pairs of
positions): on 32x32 images 16 MB per pair of images and layer, so that memory traffic, not
arithmetic, sets their speed. Here the convolution's output is made one plane at a time (one
position of the first image with every position of the second, H' W' entries that stay in
cache, ``conv.conv_plane``), its duals are taken in place (``relu.relu_plane``) and the plane
is summed into the pooled output plane it belongs to. Only the pooled planes are written.

The convolution and the duals are the operations of the separate maps, entry by entry (the
same compiled functions); the pooling adds the same terms in another order (the taps of the
first image's window outside, of the second's inside), so the result equals the separate maps
to round-off. Without pooling the "pool" is the window of one tap, and the result is the
separate maps' to the last bit.

Layout: the block ``src``, ``src_ntk`` (A, H, W, H, W) (laid out as ``conv.conv_plane`` reads
it), output ``out``, ``out_ntk`` (A, Y_h, Y_w, Y_h, Y_w). The kernel computes the pairs listed:
pair k reads ``src[source[k]]``, pairs example ``first[k]`` (its Conv outputs' variances are
rows of ``var1``) with ``second[k]`` (rows of ``var2``), an example with itself when
``same[k]``, and is written to ``out[place[k]]`` and, transposed, to ``out[mirror[k]]`` unless
that is -1 (in a block of a batch with itself (j, i) is (i, j) transposed, so the caller may list
only the pairs i <= j). Pooling taps per axis are (source, target, count) tables, as for
``conv``; ``scale`` is the squared pooling scale. A network's first Conv comes with the
"identity" layout: ``src`` holds its window sums already (products of image patches).
"""

from __future__ import annotations

import numpy as np
from numba import uint64

from ._jit import jit
from .conv import _write_row, conv_plane, padded_plane_sums, tap_source
from .relu import relu_plane


@jit(fastmath=False)
def conv_relu_pool(start, stop, src, src_ntk, zero_ntk, taps_h, taps_w, stride_h, stride_w, layout, conv_h, conv_w,
                   window, w2, b2, with_bias, ntk_parameterization, fan_in, source, first, second, same, place, mirror,
                   var1, std1, inv1, var2, std2, inv2, mean_square, kink, pooling, pool_h, pool_w, pool_stride_h,
                   pool_stride_w, scale, out, out_ntk):
    """The output planes ``[start, stop)`` (of P Y_h Y_w, for the P pairs listed) in ``out`` (and
    ``out_ntk`` unless it is empty; ``zero_ntk``: from a zero input NTK, ``src_ntk`` empty):
    module doc. Without ``pooling`` (the pooling tables are then one tap of the whole plane) each
    plane is made where it is written."""
    _, out_h, out_w, _, _ = out.shape
    with_ntk = out_ntk.size > 0
    positions = conv_h * conv_w
    plane = np.empty(positions, src.dtype)
    plane_ntk = np.empty(positions if with_ntk else 0, src.dtype)
    bases = np.empty(9, np.uint64)
    scratch = np.empty(max(conv_w, (conv_h - 1) * src.shape[2] + conv_w), src.dtype)
    target, target_ntk = out.reshape(-1), out_ntk.reshape(-1)
    flat, flat_ntk, shape = src.reshape(-1), src_ntk.reshape(-1), src.shape
    pooled = out_h * out_w
    total = np.empty(pooled, src.dtype)
    total_ntk = np.empty(pooled if with_ntk else 0, src.dtype)
    for index in range(start, stop):
        pair, p_h, p_w = index // pooled, (index // out_w) % out_h, index % out_w
        a, i, j = source[pair], first[pair], second[pair]
        if not pooling:
            p = p_h * out_w + p_w
            origin = uint64((place[pair] * pooled + p) * pooled)
            made, made_ntk = target[origin : origin + pooled], target_ntk[origin : origin + pooled] if with_ntk else plane_ntk
            conv_plane(flat, flat_ntk, shape, zero_ntk, taps_h, taps_w, stride_h, stride_w, layout, a, p_h, p_w,
                       conv_h, conv_w, made, made_ntk, bases, scratch, window, w2, b2, with_bias,
                       ntk_parameterization, fan_in)
            relu_plane(made, made_ntk, var1[i, p], std1[i, p], inv1[i, p], var2, std2, inv2, j, p if same[pair] else -1,
                       mean_square, kink)
            if mirror[pair] >= 0:
                _write_transposed(made, target, mirror[pair], p, pooled)
                if with_ntk:
                    _write_transposed(made_ntk, target_ntk, mirror[pair], p, pooled)
            continue
        total[:] = 0.0
        total_ntk[:] = 0.0
        for th in range(pool_h.shape[0]):
            y_h = tap_source(pool_h, th, p_h, pool_stride_h)
            if y_h < 0:
                continue
            for tw in range(pool_w.shape[0]):
                y_w = tap_source(pool_w, tw, p_w, pool_stride_w)
                if y_w < 0:
                    continue
                conv_plane(flat, flat_ntk, shape, zero_ntk, taps_h, taps_w, stride_h, stride_w, layout, a, y_h, y_w,
                           conv_h, conv_w, plane, plane_ntk, bases, scratch, window, w2, b2, with_bias,
                           ntk_parameterization, fan_in)
                y = y_h * conv_w + y_w
                relu_plane(plane, plane_ntk, var1[i, y], std1[i, y], inv1[i, y], var2, std2, inv2, j,
                           y if same[pair] else -1, mean_square, kink)
                _pool_plane(plane, total, conv_w, out_w, pool_h, pool_w, pool_stride_h, pool_stride_w)
                if with_ntk:
                    _pool_plane(plane_ntk, total_ntk, conv_w, out_w, pool_h, pool_w, pool_stride_h, pool_stride_w)
        p = p_h * out_w + p_w
        _write_pooled(total, target, place[pair], mirror[pair], p, pooled, scale)
        if with_ntk:
            _write_pooled(total_ntk, target_ntk, place[pair], mirror[pair], p, pooled, scale)


@jit(inline="always", fastmath=False)
def _write_transposed(made, target, mirror, p, pooled):
    """Plane ``p`` of a pair written as column ``p`` of the planes of the pair ``mirror``."""
    transposed = uint64(mirror * pooled * pooled + p)
    for e in range(pooled):
        target[transposed + uint64(e * pooled)] = made[e]


@jit(inline="always", fastmath=False)
def _pool_plane(plane, total, conv_w, out_w, pool_h, pool_w, pool_stride_h, pool_stride_w):
    """``total[q]`` (pooled positions of the second example) += the window sums of ``plane``."""
    for th in range(pool_h.shape[0]):
        source_h, target_h, count_h = pool_h[th, 0], pool_h[th, 1], pool_h[th, 2]
        for tw in range(pool_w.shape[0]):
            source_w, target_w, count_w = pool_w[tw, 0], pool_w[tw, 1], pool_w[tw, 2]
            for u in range(count_h):
                row_in = (source_h + pool_stride_h * u) * conv_w + source_w
                row_out = (target_h + u) * out_w + target_w
                for v in range(count_w):
                    total[row_out + v] += plane[row_in + pool_stride_w * v]


@jit(inline="always", fastmath=False)
def _halving(taps, out, stride):
    """Whether a pooling axis is a window of 2 with stride 2 and no padding (2 out from 2 out)."""
    return (stride == 2 and taps.shape[0] == 2 and taps[0, 0] == 0 and taps[0, 1] == 0 and taps[0, 2] == out
            and taps[1, 0] == 1 and taps[1, 1] == 0 and taps[1, 2] == out)


@jit(inline="always", fastmath=False)
def _pool_plane_2x2(plane, total, conv_w, out_h, out_w):
    """``_pool_plane`` for 2x2 windows with stride 2: each window's four entries summed in one
    pass over adjacent pairs (loads that vectorize), then added to ``total``."""
    for u in range(out_h):
        top, row = 2 * u * conv_w, u * out_w
        bottom = top + conv_w
        for v in range(out_w):
            total[row + v] += (plane[top + 2 * v] + plane[top + 2 * v + 1]) + (
                plane[bottom + 2 * v] + plane[bottom + 2 * v + 1])


@jit(fastmath=False)
def conv_relu_pool_padded(start, stop, src, src_ntk, zero_ntk, lo_h, lo_w, conv_h, conv_w, window, w2, b2, with_bias,
                          ntk_parameterization, fan_in, source, first, second, same, place, mirror, var1, std1, inv1,
                          var2, std2, inv2, mean_square, kink, pooling, pool_h, pool_w, pool_stride_h, pool_stride_w,
                          scale, out, out_ntk, map_first, first_affine, first_relu, first_variances):
    """``conv_relu_pool`` for a 3x3 filter with unit strides and zero padding (``lo_h``, ``lo_w``
    before each axis), from the unpadded block ``src`` (A, H, W, H, W).

    The additions are those of the "padded" layout, tap for tap, without a padded copy of the
    block: the input planes of three rows of the first image are copied, padded, into a small
    buffer (``slab``, in cache) as the rows come into the filter's reach, each once per pair;
    a tap outside the first image reads a plane of zeros, as the padded copy's border would.
    Every plane is then one run of nine-load sums, with no edge entries to redo (the "taps"
    layout's whole-plane path redoes them tap by tap: 3.3 against 1.2 ns per entry at 32x32).
    Units ``[start, stop)`` are (pair, pooled row of the first image): each computes the Conv
    planes of the rows its pooling window reaches, and the pooled planes of that row (without
    ``pooling``, each Conv plane where it is written).

    ``map_first``: ``src`` holds a network's first Conv's window sums (the "identity" layout of
    ``conv_relu_pool``, zero input NTK), and that Conv and the ReLU after it are applied to each
    plane as it is loaded, by the operations of ``conv_relu_pool``: two runs in one pass, whose
    middle block (NNGP and NTK of the first ReLU) is never written. ``first_affine`` = (window,
    w2, b2, with_bias, ntk_parameterization, fan_in) of that Conv, ``first_relu`` = (mean_square,
    kink), ``first_variances`` = (var1, std1, inv1, var2, std2, inv2) of its outputs."""
    _, height, width, _, _ = src.shape
    _, out_h, out_w, _, _ = out.shape
    with_ntk = out_ntk.size > 0
    read_ntk = with_ntk and (map_first or not zero_ntk)
    hp, wp = conv_h + 2, conv_w + 2  # the padded plane of the second image
    padded_plane = hp * wp
    run = (conv_h - 1) * wp + conv_w
    zero_base = 3 * width * padded_plane  # a plane of zeros after the three rows of planes
    slab = np.zeros(zero_base + padded_plane, src.dtype)
    slab_ntk = np.zeros(zero_base + padded_plane if read_ntk else 0, src.dtype)
    loaded = np.full(3, -1, np.int64)  # which (pair's source, row) each third of the slab holds
    flat, flat_ntk = src.reshape(-1), src_ntk.reshape(-1)
    target, target_ntk = out.reshape(-1), out_ntk.reshape(-1)
    positions = conv_h * conv_w
    plane = np.empty(positions, src.dtype)
    plane_ntk = np.empty(positions if with_ntk else 0, src.dtype)
    scratch = np.empty(run, src.dtype)
    first_plane = np.empty(height * width if map_first else 0, src.dtype)
    first_plane_ntk = np.empty(height * width if map_first and with_ntk else 0, src.dtype)
    bases = np.empty(9, np.uint64)
    pooled = out_h * out_w
    total = np.empty((out_w, pooled), src.dtype)
    total_ntk = np.empty((out_w, pooled if with_ntk else 0), src.dtype)
    halving = pooling and _halving(pool_h, out_h, pool_stride_h) and _halving(pool_w, out_w, pool_stride_w)
    for unit in range(start, stop):
        pair, p_h = unit // out_h, unit % out_h
        a, i, j = source[pair], first[pair], second[pair]
        total[:] = 0.0
        total_ntk[:] = 0.0
        for th in range(pool_h.shape[0]):
            y_h = tap_source(pool_h, th, p_h, pool_stride_h)
            if y_h < 0:
                continue
            for jh in range(3):
                x_h = y_h + jh - lo_h
                if 0 <= x_h < height and loaded[x_h % 3] != a * height + x_h:
                    if map_first:
                        _load_mapped_row(flat, slab, slab_ntk, a, x_h, height, width, lo_h, lo_w, wp, padded_plane,
                                         i, j, same[pair], first_affine, first_relu, first_variances, first_plane,
                                         first_plane_ntk)
                    else:
                        _load_row(flat, slab, a, x_h, height, width, lo_h, lo_w, wp, padded_plane)
                        if read_ntk:
                            _load_row(flat_ntk, slab_ntk, a, x_h, height, width, lo_h, lo_w, wp, padded_plane)
                    loaded[x_h % 3] = a * height + x_h
            for y_w in range(conv_w):
                if not _pooled_anywhere(pool_w, y_w, out_w, pool_stride_w):
                    continue
                for jh in range(3):
                    x_h = y_h + jh - lo_h
                    for jw in range(3):
                        x_w = y_w + jw - lo_w
                        inside = 0 <= x_h < height and 0 <= x_w < width
                        origin = ((x_h % 3) * width + x_w) * padded_plane if inside else zero_base
                        bases[3 * jh + jw] = uint64(origin + jh * wp + jw)
                y = y_h * conv_w + y_w
                made, made_ntk = plane, plane_ntk
                if not pooling:
                    origin = uint64((place[pair] * positions + y) * positions)
                    made = target[origin : origin + positions]
                    made_ntk = target_ntk[origin : origin + positions] if with_ntk else plane_ntk
                padded_plane_sums(slab, bases, scratch, made, conv_h, conv_w, wp)
                if read_ntk:
                    padded_plane_sums(slab_ntk, bases, scratch, made_ntk, conv_h, conv_w, wp)
                elif with_ntk:
                    made_ntk[:] = 0.0
                _write_row(made, made_ntk, made, made_ntk, uint64(0), positions, with_ntk, window, w2, b2, with_bias,
                           ntk_parameterization, fan_in)
                relu_plane(made, made_ntk, var1[i, y], std1[i, y], inv1[i, y], var2, std2, inv2, j,
                           y if same[pair] else -1, mean_square, kink)
                if not pooling:
                    if mirror[pair] >= 0:
                        _write_transposed(made, target, mirror[pair], y, positions)
                        if with_ntk:
                            _write_transposed(made_ntk, target_ntk, mirror[pair], y, positions)
                    continue
                if halving:  # the one window that reaches column y_w
                    _pool_plane_2x2(plane, total[y_w // 2], conv_w, out_h, out_w)
                    if with_ntk:
                        _pool_plane_2x2(plane_ntk, total_ntk[y_w // 2], conv_w, out_h, out_w)
                    continue
                for p_w in range(out_w):
                    for tw in range(pool_w.shape[0]):
                        if tap_source(pool_w, tw, p_w, pool_stride_w) == y_w:
                            _pool_plane(plane, total[p_w], conv_w, out_w, pool_h, pool_w, pool_stride_h, pool_stride_w)
                            if with_ntk:
                                _pool_plane(plane_ntk, total_ntk[p_w], conv_w, out_w, pool_h, pool_w, pool_stride_h,
                                            pool_stride_w)
        for p_w in range(out_w if pooling else 0):
            p = p_h * out_w + p_w
            _write_pooled(total[p_w], target, place[pair], mirror[pair], p, pooled, scale)
            if with_ntk:
                _write_pooled(total_ntk[p_w], target_ntk, place[pair], mirror[pair], p, pooled, scale)


@jit(inline="always", fastmath=False)
def _load_row(flat, slab, a, x_h, height, width, lo_h, lo_w, wp, padded_plane):
    """Row ``x_h`` of the first image of pair ``a``: its W planes, each padded, into the third
    ``x_h % 3`` of ``slab`` (whose borders stay zero)."""
    for x_w in range(width):
        origin = uint64(((a * height + x_h) * width + x_w) * height * width)
        dest = uint64(((x_h % 3) * width + x_w) * padded_plane + lo_h * wp + lo_w)
        _padded_copy(flat, origin, slab, dest, height, width, wp)


@jit(inline="always", fastmath=False)
def _padded_copy(src, origin, slab, dest, height, width, wp):
    """The plane ``src[origin:]`` (H W) into rows of ``wp`` from ``slab[dest]``."""
    for r in range(height):
        for c in range(width):
            slab[dest + uint64(r * wp + c)] = src[origin + uint64(r * width + c)]


@jit(inline="always", fastmath=False)
def _load_mapped_row(flat, slab, slab_ntk, a, x_h, height, width, lo_h, lo_w, wp, padded_plane, i, j, same,
                     first_affine, first_relu, first_variances, plane, plane_ntk):
    """``_load_row`` of a network's first Conv's window sums, each plane mapped on the way by that
    Conv (zero input NTK) and the ReLU after it, as ``conv_relu_pool`` maps them ("identity"
    layout); the NTK's planes into ``slab_ntk`` (empty: no NTK). ``plane``, ``plane_ntk``: scratch."""
    window, w2, b2, with_bias, ntk_parameterization, fan_in = first_affine
    mean_square, kink = first_relu
    var1, std1, inv1, var2, std2, inv2 = first_variances
    with_ntk = slab_ntk.size > 0
    positions = height * width
    for x_w in range(width):
        x = x_h * width + x_w
        origin = uint64(((a * height + x_h) * width + x_w) * positions)
        if with_ntk:
            plane_ntk[:] = 0.0
        _write_row(flat[origin : origin + uint64(positions)], plane_ntk, plane, plane_ntk, uint64(0), positions,
                   with_ntk, window, w2, b2, with_bias, ntk_parameterization, fan_in)
        relu_plane(plane, plane_ntk, var1[i, x], std1[i, x], inv1[i, x], var2, std2, inv2, j, x if same else -1,
                   mean_square, kink)
        dest = uint64(((x_h % 3) * width + x_w) * padded_plane + lo_h * wp + lo_w)
        _padded_copy(plane, uint64(0), slab, dest, height, width, wp)
        if with_ntk:
            _padded_copy(plane_ntk, uint64(0), slab_ntk, dest, height, width, wp)


@jit(inline="always", fastmath=False)
def _pooled_anywhere(pool_w, y_w, out_w, stride):
    """Whether Conv column ``y_w`` is in some pooling window."""
    for p_w in range(out_w):
        for tw in range(pool_w.shape[0]):
            if tap_source(pool_w, tw, p_w, stride) == y_w:
                return True
    return False


@jit(inline="always", fastmath=False)
def _write_pooled(total, target, place, mirror, p, pooled, scale):
    """The pooled plane ``p`` of a pair: scaled, written at ``place`` and, transposed, at ``mirror``."""
    origin = uint64((place * pooled + p) * pooled)
    for e in range(pooled):
        total[e] *= scale
        target[origin + e] = total[e]
    if mirror >= 0:
        _write_transposed(total, target, mirror, p, pooled)
