"""The arc-cosine duals of the ReLU family in one compiled pass over a block of covariances.

For :math:`\\phi(x) = a \\min(x, 0) + b \\max(x, 0)` and jointly Gaussian pre-activations with
variances :math:`v_1, v_2` and covariance k (Cho & Saul 2009, eq. 6; see
:class:`ntkit.layers.rectified.ABReLU`), with :math:`c = k / \\sqrt{v_1 v_2}`,
:math:`\\theta = \\arccos c`:

.. math::
    \\dot K = m - \\kappa\\,\\theta, \\qquad
    K' = \\dot K\\, k + \\kappa \\sqrt{v_1 v_2}\\, \\sin\\theta, \\qquad
    \\Theta' = \\dot K\\, \\Theta,

:math:`m = (a^2 + b^2)/2`, :math:`\\kappa = (a - b)^2 / (2\\pi)`. The torch form of
:class:`~ntkit.layers._gaussian.GaussianPair` makes about a dozen passes over the block for this;
here each entry is read once and both outputs are written once.

Layout (see ``GaussianPair.rows``): ``cov`` is (B1, B2, P, Q) and the variances are rows of
``var1`` (B1, P) and ``var2``. ``mode`` says which variances an entry pairs:

* ``CROSS``: ``cov[i, j, p, q]`` pairs ``var1[i, p]`` with ``var2[j, q]`` (vectors: P = Q = 1;
  images in the full layout: all pairs of positions);
* ``SELF``: B2 = 1 and ``cov[i, 0, p, q]`` pairs ``var1[i, p]`` with ``var2[i, q]`` (the
  self-covariances of an image);
* ``DIAGONAL``: P = 1 and ``cov[i, j, 0, q]`` pairs ``var1[i, q]`` with ``var2[j, q]`` (equal
  positions only).

Entries that pair a unit with itself (``exact``: i = j in a same-inputs block, and p = q
unless ``DIAGONAL``) get correlation exactly 1, as in ``GaussianPair.correlation``; a zero
variance gives correlation 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import cpu_empty, run_rows
from ._jit import arccos, jit

CROSS, SELF, DIAGONAL = 0, 1, 2
MODES = {"cross": CROSS, "self": SELF, "diagonal": DIAGONAL}


@jit(inline="always")
def _entry(k, v1, v2, std1, std2, inv1, inv2, unit, mean_square, kink):
    """(K', Kdot) of one entry; ``unit``: the entry pairs a unit with itself (correlation 1).

    Square roots of the variances come per position, not per entry (the division and square
    root per entry are most of the cost); a covariance equal to both variances (or to minus
    both) still gets correlation exactly 1 (-1), as ``k / sqrt(v1 v2)`` does in the torch form:
    twins in two batches, and antipodal inputs, whose Kdot is then exactly 0 for ReLU. Bitwise
    ``|``, ``&``: no short-circuit branches, so the loop vectorizes."""
    norm = std1 * std2
    c = min(max(k * (inv1 * inv2), -1.0), 1.0)
    c = -1.0 if (k == -v1) & (k == -v2) else c
    c = 1.0 if unit | ((k == v1) & (k == v2)) else c
    c = c if norm > 0 else 0.0
    kdot = mean_square - kink * arccos(c)
    return kdot * k + kink * norm * math.sqrt(1.0 - c * c), kdot


@jit
def relu_duals(start, stop, cov, ntk, var1, var2, std1, std2, inv1, inv2, mode, exact, mean_square, kink, out, out_ntk):
    """Fill rows ``[start, stop)`` of ``out`` (B1 B2 P rows of Q entries) with K' and, when ``ntk``
    is not empty, of ``out_ntk`` with Theta' (module doc); ``std``, ``inv``: the variances'
    square roots and their inverses."""
    b1, b2, rows, cols = cov.shape
    with_ntk = ntk.size > 0
    for flat in range(start, stop):
        i = flat // (b2 * rows)
        j = (flat // rows) % b2
        p = flat % rows
        same_example = mode == SELF or (exact and i == j)
        second = i if mode == SELF else j
        k_row, out_row = cov[i, j, p], out[i, j, p]
        v2, s2, r2 = var2[second], std2[second], inv2[second]
        # Four copies of the loop, each with no branch inside, so that each vectorizes.
        if mode == DIAGONAL and with_ntk:
            v1, s1, r1, ntk_row, tangent_row = var1[i], std1[i], inv1[i], ntk[i, j, p], out_ntk[i, j, p]
            for q in range(cols):
                out_row[q], kdot = _entry(k_row[q], v1[q], v2[q], s1[q], s2[q], r1[q], r2[q], same_example, mean_square, kink)
                tangent_row[q] = kdot * ntk_row[q]
        elif mode == DIAGONAL:
            v1, s1, r1 = var1[i], std1[i], inv1[i]
            for q in range(cols):
                out_row[q] = _entry(k_row[q], v1[q], v2[q], s1[q], s2[q], r1[q], r2[q], same_example, mean_square, kink)[0]
        elif with_ntk:
            v, s, r, ntk_row, tangent_row = var1[i, p], std1[i, p], inv1[i, p], ntk[i, j, p], out_ntk[i, j, p]
            for q in range(cols):
                unit = same_example & (p == q)
                out_row[q], kdot = _entry(k_row[q], v, v2[q], s, s2[q], r, r2[q], unit, mean_square, kink)
                tangent_row[q] = kdot * ntk_row[q]
        else:
            v, s, r = var1[i, p], std1[i, p], inv1[i, p]
            for q in range(cols):
                unit = same_example & (p == q)
                out_row[q] = _entry(k_row[q], v, v2[q], s, s2[q], r, r2[q], unit, mean_square, kink)[0]


@jit
def relu_plane(plane, plane_ntk, v1, s1, r1, var2, std2, inv2, j, unit_at, mean_square, kink):
    """The duals in place over one plane of covariances of a position of the first example
    (variance ``v1``, its root ``s1`` and inverse ``r1``) with the positions q of the second
    (row ``j`` of ``var2``, ``std2``, ``inv2``): K' over ``plane``, Theta' = Kdot Theta over
    ``plane_ntk`` (empty: no NTK). ``unit_at``: the q that pairs a unit with itself, or -1. The
    entries of ``relu_duals``, for the fused maps of :mod:`ntkit._compiled.fused`."""
    if plane_ntk.size > 0:
        for q in range(plane.size):
            plane[q], kdot = _entry(plane[q], v1, var2[j, q], s1, std2[j, q], r1, inv2[j, q], q == unit_at, mean_square, kink)
            plane_ntk[q] = kdot * plane_ntk[q]
    else:
        for q in range(plane.size):
            plane[q] = _entry(plane[q], v1, var2[j, q], s1, std2[j, q], r1, inv2[j, q], q == unit_at, mean_square, kink)[0]


def roots(var):
    """The square roots of variances and their inverses (infinite for a zero variance, whose
    correlations ``_entry`` sets to 0)."""
    std = np.sqrt(var)
    with np.errstate(divide="ignore"):
        return std, 1.0 / std


def run(cov, ntk, var1, var2, mode: int, exact: bool, a: float, b: float):
    """K' and Theta' (or an empty array) as new arrays, for NumPy arrays laid out as above."""
    dtype = torch.from_numpy(cov[:0]).dtype
    out = cpu_empty(cov.shape, dtype).numpy()
    out_ntk = cpu_empty(cov.shape, dtype).numpy() if ntk is not None else np.empty((0, 0, 0, 0), cov.dtype)
    ntk = ntk if ntk is not None else out_ntk
    (std1, inv1), (std2, inv2) = roots(var1), roots(var2)
    b1, b2, rows, cols = cov.shape
    run_rows(
        relu_duals, b1 * b2 * rows, cov, ntk, var1, var2, std1, std2, inv1, inv2, mode, exact,
        (a * a + b * b) / 2, (a - b) ** 2 / (2 * math.pi), out, out_ntk, cost=cols,
    )
    return out, out_ntk
