"""Dropout, with PyTorch's meaning of p (the probability of dropping a unit)."""

from __future__ import annotations

import torch

from .._errors import NtkitError
from ..kernel import INPUTS, Kernel
from ._base import Kernels, Layer, single
from ._spatial import position_mask, set_self


class Dropout(Layer):
    """Dropout: in training mode each unit is zeroed with probability ``p`` and the others are
    scaled by :math:`1/(1-p)`; in evaluation mode the identity (``torch.nn.Dropout``).

    Kernel in training mode (Novak et al. 2020, ``stax.Dropout``): the masks of two different
    examples are independent, :math:`\\mathbb{E}[m m'] = (1-p)^2`, which the scaling cancels; an
    example with itself shares its mask, :math:`\\mathbb{E}[m^2] = 1-p`. So

    .. math::
        K'(x_i, x'_j) = K(x_i, x'_j) \\cdot \\begin{cases} 1/(1-p) & \\text{same example} \\\\
        1 & \\text{otherwise} \\end{cases}

    and the same factor for the NTK. "Same example" means the diagonal when ``x2`` is None (or
    ``x2 is x1``); the variances always get the factor. On images each (channel, position) has
    its own mask, so the factor applies to the same example at the same position only: the
    (p, p) entries of the self-covariances and the (i, i, p, p) entries of the kernels. The
    outputs are no longer Gaussian (a mixture), so a nonlinearity needs a ``Dense`` between it
    and a ``Dropout``.
    In evaluation mode (``net.eval()``) the kernel is unchanged.
    """

    diagonal_layout = True

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise NtkitError(f"Dropout: p (the drop probability) must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(x, self.p, self.training)

    def kernel_map(self, k: Kernels) -> Kernel:
        k = single(k, "Dropout")
        if not self.training or self.p == 0:
            return k
        if k.sources == INPUTS:
            raise NtkitError(
                "it drops the network's inputs: their features are finitely many, so the next "
                "Dense sums a random subset of them and is not Gaussian (its kernel is a mixture "
                "over masks); put Dropout after a Dense or Conv and an activation"
            )
        factor = 1.0 / (1.0 - self.p)
        if k.spatial_ndim:
            return self._spatial_kernel_map(k, factor)
        var1, var2 = k.map_variances(lambda v: v * factor)
        if not k.same_inputs:
            return k.replace(var1=var1, var2=var2, is_gaussian=False)
        nngp = k.nngp.clone()
        nngp.diagonal().copy_(var1)
        ntk = None
        if k.ntk is not None:
            ntk = k.ntk.clone()
            ntk.diagonal().mul_(factor)
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, is_gaussian=False)

    def _spatial_kernel_map(self, k: Kernel, factor: float) -> Kernel:
        same_position = None if k.diagonal else position_mask(tuple(k.feature_shape[1:]), k.device)

        def scaled(t: torch.Tensor) -> torch.Tensor:
            if same_position is None:  # the diagonal layout: every entry pairs equal positions
                return t * factor
            return torch.where(same_position, t * factor, t)

        var1, var2 = k.map_variances(scaled)
        if not k.same_inputs:
            return k.replace(var1=var1, var2=var2, is_gaussian=False)
        nngp = k.nngp.clone()
        set_self(nngp, var1)
        ntk = None
        if k.ntk is not None:
            ntk = k.ntk.clone()
            index = torch.arange(ntk.shape[0], device=ntk.device)
            ntk[index, index] = scaled(ntk[index, index])
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, is_gaussian=False)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
