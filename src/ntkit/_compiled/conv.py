"""The whole kernel map of a 2-D convolution on all pairs of positions, in one compiled pass.

For images in the full spatial layout, ``Conv``'s kernel map is a window sum over filter taps
shifted alike in both images followed by the affine map (Novak et al. 2019, eq. 8; Arora et al.
2019, eq. 7; :func:`ntkit.layers.dense.affine_kernels`):

.. math::
    \\bar K[y, y'] = \\frac{1}{|w|} \\sum_{j \\in w} K[s y + j - lo,\\; s y' + j - lo], \\qquad
    K' = \\sigma_w^2 \\bar K + \\sigma_b^2, \\qquad
    \\Theta' = \\sigma_w^2 \\bar\\Theta + K' \\;(\\text{"ntk"}) \\text{ or }
    \\sigma_w^2 \\bar\\Theta + n \\bar K + 1 \\;(\\text{"standard"}),

with y = (y_h, y_w), taps j = (j_h, j_w), and taps outside either image skipped (zero padding;
"circular" inputs come padded periodically). The two-step torch form makes a pass per axis for
the sums and one for the affine map; here each output row (a, y_h, y_w, y'_h, :) is summed in
a buffer in cache, mapped and written once. Where a 3x3 filter with unit strides has all nine
taps inside, an entry takes nine loads and one store: for "same" padding a whole plane
(a, y_h, y_w, :, :) at once, its rows run together (the entries at the image's edges, which
some taps miss, are then redone tap by tap); otherwise the row's inner entries.

Every entry adds its taps in the same order (j_h, then j_w), whichever path computes it, and
whether it pairs two images or an image with itself: twins still get exactly the numbers of a
variance. Tap tables per axis hold (source, target, count) as in
``ntkit.layers._spatial.filter_taps``: tap j adds input ``source + stride u`` to output
``target + u`` for u < count.

Layout: ``nngp``, ``ntk`` (A, H, W, H, W) -> (A, H', W', H', W').
"""

from __future__ import annotations

import numpy as np
from numba import uint64

from ._jit import jit
from .affine import affine_entry


@jit(fastmath=False)
def conv_kernels(start, stop, nngp, ntk, out, out_ntk, taps_h, taps_w, stride_h, stride_w, window, w2, b2, with_bias,
                 ntk_parameterization, fan_in):
    """Fill the planes ``[start, stop)`` (of A H' W': plane (a, y_h, y_w) holds the H' W' entries
    (y'_h, y'_w)) of ``out`` (and ``out_ntk`` unless ``ntk`` is empty) with K' (Theta')."""
    _, out_h, out_w, _, _ = out.shape
    with_ntk = ntk.size > 0
    three = taps_h.shape[0] == 3 and taps_w.shape[0] == 3 and stride_h == 1 and stride_w == 1
    # the entries y'_w that all three width taps reach (the row's inner entries)
    inner_lo = max(taps_w[0, 1], max(taps_w[1, 1], taps_w[2, 1])) if three else 0
    inner_hi = min(taps_w[0, 1] + taps_w[0, 2], min(taps_w[1, 1] + taps_w[1, 2], taps_w[2, 1] + taps_w[2, 2])) if three else 0
    shape = nngp.shape
    source, source_ntk, target, target_ntk = nngp.reshape(-1), ntk.reshape(-1), out.reshape(-1), out_ntk.reshape(-1)
    bases = np.empty(9, np.uint64)
    acc = np.empty(out_w, nngp.dtype)
    acc_ntk = np.empty(out_w if with_ntk else 0, nngp.dtype)
    # "same" geometry: a plane's entries (y'_h, y'_w) sit where their taps read, shifted
    whole_planes = three and out_h == shape[1] and out_w == shape[2]
    plane_acc = np.empty(out_h * out_w if whole_planes else 0, nngp.dtype)
    plane_acc_ntk = np.empty(out_h * out_w if whole_planes and with_ntk else 0, nngp.dtype)
    for plane in range(start, stop):
        a, y_h, y_w = plane // (out_h * out_w), (plane // out_w) % out_h, plane % out_w
        if whole_planes and _plane_bases(shape, taps_h, taps_w, a, y_h, y_w, bases):
            for buffer, src in ((plane_acc, source), (plane_acc_ntk, source_ntk)):
                if buffer.size > 0:
                    _sum_plane(src, shape, buffer, bases, taps_h, taps_w, a, y_h, y_w, inner_lo, inner_hi)
            _write_row(plane_acc, plane_acc_ntk, target, target_ntk, uint64(plane * out_h * out_w), out_h * out_w,
                       with_ntk, window, w2, b2, with_bias, ntk_parameterization, fan_in)
            continue
        for y_hp in range(out_h):
            if three and _nine_taps(shape, taps_h, taps_w, a, y_h, y_w, y_hp, bases):
                _sum_nine(source, acc, bases, taps_w, inner_lo, inner_hi)
                if with_ntk:
                    _sum_nine(source_ntk, acc_ntk, bases, taps_w, inner_lo, inner_hi)
            else:
                _sum_taps(source, shape, acc, taps_h, taps_w, stride_h, stride_w, a, y_h, y_w, y_hp)
                if with_ntk:
                    _sum_taps(source_ntk, shape, acc_ntk, taps_h, taps_w, stride_h, stride_w, a, y_h, y_w, y_hp)
            first = uint64((plane * out_h + y_hp) * out_w)
            _write_row(acc, acc_ntk, target, target_ntk, first, out_w, with_ntk, window, w2, b2, with_bias,
                       ntk_parameterization, fan_in)


@jit(inline="always", fastmath=False)
def _nine_taps(shape, taps_h, taps_w, a, y_h, y_w, y_hp, bases):
    """Whether all nine taps of row (a, y_h, y_w, y'_h) are inside both images (unit strides);
    if so, ``bases[3 jh + jw]`` is where tap (jh, jw) reads for output y'_w = 0."""
    _, height, width, _, _ = shape
    for jh in range(3):
        target, count = taps_h[jh, 1], taps_h[jh, 2]
        if not (target <= y_h < target + count and target <= y_hp < target + count):
            return False
    for jw in range(3):
        if not (taps_w[jw, 1] <= y_w < taps_w[jw, 1] + taps_w[jw, 2]):
            return False
    for jh in range(3):
        x_h, x_hp = taps_h[jh, 0] + y_h - taps_h[jh, 1], taps_h[jh, 0] + y_hp - taps_h[jh, 1]
        for jw in range(3):
            x_w = taps_w[jw, 0] + y_w - taps_w[jw, 1]
            row = (((a * height + x_h) * width + x_w) * height + x_hp) * width
            bases[3 * jh + jw] = uint64(row + taps_w[jw, 0] - taps_w[jw, 1])
    return True


@jit(inline="always", fastmath=False)
def _plane_bases(shape, taps_h, taps_w, a, y_h, y_w, bases):
    """Whether all nine taps reach position (y_h, y_w) of the first image; if so,
    ``bases[3 jh + jw]`` is where tap (jh, jw) reads entry k = y'_h W + y'_w of the plane
    ("same" geometry, unit strides: at ``bases[t] + k``)."""
    _, height, width, _, _ = shape
    for j in range(3):
        if not (taps_h[j, 1] <= y_h < taps_h[j, 1] + taps_h[j, 2] and taps_w[j, 1] <= y_w < taps_w[j, 1] + taps_w[j, 2]):
            return False
    for jh in range(3):
        x_h = taps_h[jh, 0] + y_h - taps_h[jh, 1]
        for jw in range(3):
            x_w = taps_w[jw, 0] + y_w - taps_w[jw, 1]
            shift = (taps_h[jh, 0] - taps_h[jh, 1]) * width + taps_w[jw, 0] - taps_w[jw, 1]
            bases[3 * jh + jw] = uint64(((a * height + x_h) * width + x_w) * height * width + shift)
    return True


@jit(inline="always", fastmath=False)
def _sum_plane(src, shape, acc, bases, taps_h, taps_w, a, y_h, y_w, inner_lo, inner_hi):
    """A whole plane's window sums into ``acc`` (H' W'): the rows that all height taps reach as one
    run of nine-load sums over the flattened rows; the entries that some tap misses (the other
    rows, and the inner rows' edge columns, where the run wrapped into the next row) are then
    zeroed and summed tap by tap, each tap in one pass over the entries it reaches."""
    _, height, width, _, _ = shape
    row_lo = max(taps_h[0, 1], max(taps_h[1, 1], taps_h[2, 1]))
    row_hi = min(taps_h[0, 1] + taps_h[0, 2], min(taps_h[1, 1] + taps_h[1, 2], taps_h[2, 1] + taps_h[2, 2]))
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = bases[0], bases[1], bases[2], bases[3], bases[4], bases[5], bases[6], bases[7], bases[8]
    for k in range(uint64(row_lo * width + inner_lo), uint64((row_hi - 1) * width + inner_hi)):
        acc[k] = (((((((src[b0 + k] + src[b1 + k]) + src[b2 + k]) + src[b3 + k]) + src[b4 + k]) + src[b5 + k])
                   + src[b6 + k]) + src[b7 + k]) + src[b8 + k]
    for y_hp in range(height):
        inner_row = row_lo <= y_hp < row_hi
        for e in range(width):
            if not inner_row or e < inner_lo or e >= inner_hi:
                acc[y_hp * width + e] = 0.0
    for t in range(9):
        jh, jw = t // 3, t % 3
        col_lo, col_hi = taps_w[jw, 1], taps_w[jw, 1] + taps_w[jw, 2]
        for y_hp in range(taps_h[jh, 1], taps_h[jh, 1] + taps_h[jh, 2]):
            row = uint64(y_hp * width)
            if row_lo <= y_hp < row_hi:  # an inner row: its edge columns only
                for e in range(col_lo, min(col_hi, inner_lo)):
                    acc[row + e] += src[bases[t] + row + e]
                for e in range(max(col_lo, inner_hi), col_hi):
                    acc[row + e] += src[bases[t] + row + e]
            else:
                for e in range(uint64(col_lo), uint64(col_hi)):
                    acc[row + e] += src[bases[t] + row + e]


@jit(inline="always", fastmath=False)
def _sum_nine(src, acc, bases, taps_w, inner_lo, inner_hi):
    """``acc[e]``: the nine taps' sum in tap order; inner entries with nine loads and one store
    (the bases held as scalars, so that the loop vectorizes), the others tap by tap."""
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = bases[0], bases[1], bases[2], bases[3], bases[4], bases[5], bases[6], bases[7], bases[8]
    for e in range(uint64(inner_lo), uint64(inner_hi)):
        acc[e] = (((((((src[b0 + e] + src[b1 + e]) + src[b2 + e]) + src[b3 + e]) + src[b4 + e]) + src[b5 + e])
                   + src[b6 + e]) + src[b7 + e]) + src[b8 + e]
    for edge in range(inner_lo + acc.size - inner_hi):
        e = edge if edge < inner_lo else inner_hi + edge - inner_lo
        total = 0.0
        for t in range(9):
            jw = t % 3
            if taps_w[jw, 1] <= e < taps_w[jw, 1] + taps_w[jw, 2]:
                total += src[bases[t] + uint64(e)]
        acc[e] = total


@jit(inline="always", fastmath=False)
def _sum_taps(flat, shape, acc, taps_h, taps_w, stride_h, stride_w, a, y_h, y_w, y_hp):
    """Any filter and strides: ``acc`` = the taps' sum for row (a, y_h, y_w, y'_h) of the flat
    input of ``shape``, tap by tap in tap order, each tap over the entries it reaches."""
    _, height, width, _, _ = shape
    acc[:] = 0.0
    for jh in range(taps_h.shape[0]):
        source_h, target_h, count_h = taps_h[jh, 0], taps_h[jh, 1], taps_h[jh, 2]
        u, up = y_h - target_h, y_hp - target_h
        if u < 0 or u >= count_h or up < 0 or up >= count_h:
            continue
        x_h, x_hp = source_h + stride_h * u, source_h + stride_h * up
        for jw in range(taps_w.shape[0]):
            source_w, target_w, count_w = taps_w[jw, 0], taps_w[jw, 1], taps_w[jw, 2]
            uw = y_w - target_w
            if uw < 0 or uw >= count_w:
                continue
            x_w = source_w + stride_w * uw
            origin = uint64((((a * height + x_h) * width + x_w) * height + x_hp) * width + source_w)
            for e in range(uint64(count_w)):
                acc[uint64(target_w) + e] += flat[origin + uint64(stride_w) * e]


@jit(inline="always", fastmath=False)
def _write_row(acc, acc_ntk, target, target_ntk, first, out_w, with_ntk, window, w2, b2, with_bias, ntk_parameterization,
               fan_in):
    """The affine map of the row's window sums (:func:`ntkit._compiled.affine.affine_entry`),
    written to the output from ``first``."""
    for e in range(out_w):
        total_ntk = acc_ntk[e] if with_ntk else 0.0
        value, tangent = affine_entry(acc[e], total_ntk, window, w2, b2, with_bias, ntk_parameterization, fan_in, with_ntk)
        target[first + uint64(e)] = value
        if with_ntk:
            target_ntk[first + uint64(e)] = tangent


@jit(fastmath=False)
def conv_padded_planes(start, stop, padded, padded_ntk, out, out_ntk, window, w2, b2, with_bias, ntk_parameterization,
                       fan_in):
    """A 3x3 filter with unit strides on inputs padded on all four position axes (A, H_p, W_p,
    H_p, W_p): planes ``[start, stop)`` of ``out`` (A, H', W', H', W'), each summed as one run.

    In a padded plane every tap is inside, and output (y'_h, y'_w) of tap (jh, jw) reads
    entry ``(y'_h + jh) W_p + y'_w + jw``: with k = y'_h W_p + y'_w, the plane's nine sources are
    ``bases[t] + k``. The run covers k up to the last output, the padded columns between rows
    included (computed and dropped); a padded zero adds nothing, so the sums equal the unpadded
    ones tap for tap. For small images, where a third or more of the entries are edges."""
    _, hp, wp, _, _ = padded.shape
    _, out_h, out_w, _, _ = out.shape
    with_ntk = padded_ntk.size > 0
    source, source_ntk, target, target_ntk = padded.reshape(-1), padded_ntk.reshape(-1), out.reshape(-1), out_ntk.reshape(-1)
    run = (out_h - 1) * wp + out_w
    acc = np.empty(run, padded.dtype)
    acc_ntk = np.empty(run if with_ntk else 0, padded.dtype)
    bases = np.empty(9, np.uint64)
    for plane in range(start, stop):
        a, y_h, y_w = plane // (out_h * out_w), (plane // out_w) % out_h, plane % out_w
        for jh in range(3):
            for jw in range(3):
                bases[3 * jh + jw] = uint64(((a * hp + y_h + jh) * wp + y_w + jw) * hp * wp + jh * wp + jw)
        for buffer, src in ((acc, source), (acc_ntk, source_ntk)):
            if buffer.size > 0:
                nine_tap_run(src, bases, run, buffer)
        for y_hp in range(out_h):
            _write_row(acc[y_hp * wp : y_hp * wp + out_w], acc_ntk[y_hp * wp : y_hp * wp + out_w] if with_ntk else acc_ntk,
                       target, target_ntk, uint64((plane * out_h + y_hp) * out_w), out_w, with_ntk, window, w2, b2,
                       with_bias, ntk_parameterization, fan_in)


@jit(inline="always", fastmath=False)
def conv_plane(flat, flat_ntk, shape, zero_ntk, taps_h, taps_w, stride_h, stride_w, layout, a, y_h, y_w, out_h, out_w,
               plane, plane_ntk, bases, scratch, window, w2, b2, with_bias, ntk_parameterization, fan_in):
    """K' (and Theta' unless ``plane_ntk`` is empty) of one output plane (a, y_h, y_w) into ``plane``
    and ``plane_ntk`` (H' W' entries), by the operations of ``conv_kernels``: for the fused maps of
    :mod:`ntkit._compiled.fused`. ``flat``, ``flat_ntk``: the input block of ``shape`` (A, H, W,
    H, W), flattened. ``layout``: ``TAPS`` (``taps_h``, ``taps_w`` as in ``conv_kernels``),
    ``PADDED`` (3x3, unit strides, inputs padded on the four position axes: the additions of
    ``conv_padded_planes``) or ``IDENTITY`` (the input holds the window sums already, as one tap
    would). ``zero_ntk``: the input NTK is zero (a network's first layer) and ``flat_ntk`` empty.
    ``bases`` (9 entries) and ``scratch`` (the padded run, at least W') are scratch."""
    with_ntk = plane_ntk.size > 0
    if layout == IDENTITY:  # the affine map reads the sums where they are
        _, height, width, _, _ = shape
        origin = uint64(((a * height + y_h) * width + y_w) * height * width)
        sums = flat[origin : origin + uint64(height * width)]
        if zero_ntk:
            plane_ntk[:] = 0.0
        _write_row(sums, plane_ntk, plane, plane_ntk, uint64(0), out_h * out_w, with_ntk, window, w2, b2, with_bias,
                   ntk_parameterization, fan_in)
        return
    _plane_sums(flat, shape, taps_h, taps_w, stride_h, stride_w, layout, a, y_h, y_w, out_h, out_w, plane, bases, scratch)
    if zero_ntk:
        plane_ntk[:] = 0.0
    elif with_ntk:
        _plane_sums(flat_ntk, shape, taps_h, taps_w, stride_h, stride_w, layout, a, y_h, y_w, out_h, out_w, plane_ntk,
                    bases, scratch)
    _write_row(plane, plane_ntk, plane, plane_ntk, uint64(0), out_h * out_w, with_ntk, window, w2, b2, with_bias,
               ntk_parameterization, fan_in)


TAPS, PADDED, IDENTITY = 0, 1, 2


@jit(inline="always", fastmath=False)
def nine_tap_run(src, bases, run, out):
    """``out[k]``, k < ``run``: the nine taps' sum ``src[bases[t] + k]`` in tap order, in one pass
    (the bases held as scalars, so that the loop vectorizes)."""
    b0, b1, b2, b3, b4 = bases[0], bases[1], bases[2], bases[3], bases[4]
    b5, b6, b7, b8 = bases[5], bases[6], bases[7], bases[8]
    for k in range(uint64(run)):
        out[k] = (((((((src[b0 + k] + src[b1 + k]) + src[b2 + k]) + src[b3 + k]) + src[b4 + k]) + src[b5 + k])
                   + src[b6 + k]) + src[b7 + k]) + src[b8 + k]


@jit(inline="always", fastmath=False)
def padded_plane_sums(src, bases, scratch, plane, out_h, out_w, padded_width):
    """A plane's window sums from inputs padded on the second image's axes (rows of
    ``padded_width``): one run over the padded rows into ``scratch``, then the entries that are
    outputs (not padding columns) into ``plane`` (H' W')."""
    nine_tap_run(src, bases, (out_h - 1) * padded_width + out_w, scratch)
    for y_hp in range(out_h):
        for e in range(out_w):
            plane[y_hp * out_w + e] = scratch[y_hp * padded_width + e]


@jit(inline="always", fastmath=False)
def tap_source(taps, tap, y, stride):
    """The input index that tap ``tap`` of a (source, target, count) table adds to output ``y``,
    or -1 where it reaches none."""
    u = y - taps[tap, 1]
    return taps[tap, 0] + stride * u if 0 <= u < taps[tap, 2] else -1


@jit(inline="always", fastmath=False)
def _plane_sums(flat, shape, taps_h, taps_w, stride_h, stride_w, layout, a, y_h, y_w, out_h, out_w, plane, bases,
                scratch):
    """The window sums of plane (a, y_h, y_w) into ``plane``: the additions of ``conv_kernels`` (or
    of ``conv_padded_planes``), in their order."""
    _, height, width, _, _ = shape
    if layout == IDENTITY:
        origin = uint64(((a * height + y_h) * width + y_w) * height * width)
        for k in range(uint64(height * width)):
            plane[k] = flat[origin + k]
        return
    if layout == PADDED:
        for jh in range(3):
            for jw in range(3):
                bases[3 * jh + jw] = uint64(((a * height + y_h + jh) * width + y_w + jw) * height * width + jh * width + jw)
        padded_plane_sums(flat, bases, scratch, plane, out_h, out_w, width)
        return
    three = taps_h.shape[0] == 3 and taps_w.shape[0] == 3 and stride_h == 1 and stride_w == 1
    inner_lo = max(taps_w[0, 1], max(taps_w[1, 1], taps_w[2, 1])) if three else 0
    inner_hi = min(taps_w[0, 1] + taps_w[0, 2], min(taps_w[1, 1] + taps_w[1, 2], taps_w[2, 1] + taps_w[2, 2])) if three else 0
    if three and out_h == height and out_w == width and _plane_bases(shape, taps_h, taps_w, a, y_h, y_w, bases):
        _sum_plane(flat, shape, plane, bases, taps_h, taps_w, a, y_h, y_w, inner_lo, inner_hi)
        return
    for y_hp in range(out_h):
        row = plane[y_hp * out_w : (y_hp + 1) * out_w]
        if three and _nine_taps(shape, taps_h, taps_w, a, y_h, y_w, y_hp, bases):
            _sum_nine(flat, row, bases, taps_w, inner_lo, inner_hi)
        else:
            _sum_taps(flat, shape, row, taps_h, taps_w, stride_h, stride_w, a, y_h, y_w, y_hp)


@jit(fastmath=False)
def conv_variances(variances, taps_h, taps_w, stride_h, stride_w, out, window, w2, b2, with_bias, ntk_parameterization,
                   fan_in):
    """``out`` (N, H', W'): the output variance at each position, from the input variances
    ``variances`` (N, H, W), padded as the pairs' inputs are (for the padded path, with the taps
    ``(j, 0, H')``). The taps are added in the order of ``conv_plane``, from zero, and a skipped
    tap (or a padded zero) changes no sum, so an entry equals the plane's (p, p) entry of an
    example paired with itself (or with its twin) bit for bit."""
    n, out_h, out_w = out.shape
    for i in range(n):
        for y_h in range(out_h):
            for y_w in range(out_w):
                total = 0.0
                for jh in range(taps_h.shape[0]):
                    x_h = tap_source(taps_h, jh, y_h, stride_h)
                    for jw in range(taps_w.shape[0]):
                        x_w = tap_source(taps_w, jw, y_w, stride_w)
                        if x_h >= 0 and x_w >= 0:
                            total += variances[i, x_h, x_w]
                out[i, y_h, y_w] = affine_entry(total, 0.0, window, w2, b2, with_bias, ntk_parameterization, fan_in, False)[0]
