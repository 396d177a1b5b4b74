"""Layers that leave the statistics alone: Identity and Flatten."""

from __future__ import annotations

import math

import torch

from ..kernel import Kernel
from ._base import Kernels, Layer, single
from ._spatial import linear_map


class Identity(Layer):
    """:math:`f(x) = x`, in both faces (e.g. the skip branch of a residual block)."""

    diagonal_layout = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def kernel_map(self, k: Kernels) -> Kernels:
        return k


class Flatten(Layer):
    """Flatten all axes but the batch axis: ``(N, C, *spatial) -> (N, C * prod(spatial))``.

    On fully-connected features ``(N, C)`` it is the identity, in both faces. On images the
    flattened units are indexed by (channel, position); a following ``Dense`` sums over all of
    them, so the per-unit kernel is the average of the p = p' diagonal (Novak et al. 2019,
    eq. 10; neural-tangents ``stax.Flatten``):

    .. math:: K'(x, x') = \\frac{1}{|S|} \\sum_p K(x, x')[p, p],

    and the same for :math:`\\Theta`. Units at different positions have different kernels, so
    the output counts as non-Gaussian (as after ``FanInConcat``): a nonlinearity needs a
    ``Dense`` after the ``Flatten``. Cost per pair: :math:`O(|S|)`.
    """

    diagonal_layout = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def kernel_map(self, k: Kernels) -> Kernel:
        k = single(k, "Flatten")
        n = k.spatial_ndim
        if n == 0:
            return k
        positions = math.prod(k.feature_shape[1:])

        def trace(t: torch.Tensor, leading: int) -> torch.Tensor:
            """The mean of the p = p' entries of ``t``, whose first ``leading`` axes are batches."""
            if k.diagonal:
                return t.reshape(*t.shape[:leading], positions).sum(-1).div_(positions)
            flat = t.reshape(*t.shape[:leading], positions, positions)
            return flat.diagonal(dim1=-2, dim2=-1).sum(-1).div_(positions)

        return linear_map(
            k,
            trace,
            feature_shape=(k.feature_shape[0] * positions,),
            is_gaussian=k.is_gaussian and positions == 1,
            spatial_layout="full",
        )
