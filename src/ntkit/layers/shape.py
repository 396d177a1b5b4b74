"""Layers that leave the statistics alone: Identity and Flatten."""

from __future__ import annotations

import torch

from .._errors import NtkitError
from ..kernel import Kernel
from ._base import Kernels, Layer, single


class Identity(Layer):
    """:math:`f(x) = x`, in both faces (e.g. the skip branch of a residual block)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def kernel_map(self, k: Kernels) -> Kernels:
        return k


class Flatten(Layer):
    """Flatten all axes but the batch axis: ``(N, C, *spatial) -> (N, C * prod(spatial))``.

    On fully-connected features ``(N, C)`` it is the identity, in both faces.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def kernel_map(self, k: Kernels) -> Kernel:
        k = single(k, "Flatten")
        if len(k.feature_shape) != 1:
            raise NtkitError(f"features of shape {k.feature_shape}: only fully-connected kernels are supported")
        return k
