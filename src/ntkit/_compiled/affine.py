"""The kernel map of an affine layer after a window sum, in place, in one compiled pass.

A convolution's kernel map averages the input kernels over its filter window and then applies
the map of :math:`W x + b` (Novak et al. 2019, eq. 8; :func:`ntkit.layers.dense.affine_kernels`):

.. math::
    K' = \\sigma_w^2 \\bar K + \\sigma_b^2, \\qquad
    \\Theta' = \\sigma_w^2 \\bar\\Theta + K' \\;\\;(\\text{"ntk"}), \\qquad
    \\Theta' = \\sigma_w^2 \\bar\\Theta + n\\,\\bar K + 1 \\;\\;(\\text{"standard"}),

with :math:`\\bar K = (\\text{window sum}) \\cdot (1 / |\\text{window}|)` (a product: a division
per entry would cost more than the rest of the map). The torch form takes four to six passes;
this takes one, with the same operations in the same order (no fused multiply-adds), so that its
numbers equal the torch form's to the last bit.
"""

from __future__ import annotations

from ._jit import jit


@jit(inline="always", fastmath=False)
def affine_entry(total, total_ntk, window, w2, b2, with_bias, ntk_parameterization, fan_in, with_ntk):
    """(K', Theta') of one entry from its window sums (Theta' is 0 without ``with_ntk``)."""
    mean = total * (1.0 / window)  # a reciprocal per call, not a division per entry
    value = mean * w2
    if with_bias:
        value = value + b2
    tangent = 0.0
    if with_ntk:
        tangent = (total_ntk * (1.0 / window)) * w2
        if ntk_parameterization:
            tangent = tangent + value
        else:
            tangent = tangent + mean * fan_in
            if with_bias:
                tangent = tangent + 1.0
    return value, tangent


@jit(fastmath=False)
def affine_in_place(start, stop, nngp, ntk, window, w2, b2, with_bias, ntk_parameterization, fan_in):
    """Overwrite entries ``[start, stop)`` of the flat window sums ``nngp`` and ``ntk`` (empty: no
    NTK) with K', Theta'."""
    with_ntk = ntk.size > 0
    for e in range(start, stop):
        total_ntk = ntk[e] if with_ntk else 0.0
        value, tangent = affine_entry(nngp[e], total_ntk, window, w2, b2, with_bias, ntk_parameterization, fan_in, with_ntk)
        nngp[e] = value
        if with_ntk:
            ntk[e] = tangent
