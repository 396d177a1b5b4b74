"""Activation: an elementwise nonlinearity, given by its function and its Gaussian dual."""

from __future__ import annotations

import torch

from ..kernel import Kernel
from ._base import Kernels, Layer, require_gaussian, single
from ._gaussian import GaussianPair
from ._spatial import output_variances


class Activation(Layer):
    """Base class of elementwise nonlinearities :math:`\\phi`.

    A subclass gives ``fn`` (the finite face) and ``dual``, which for jointly Gaussian
    :math:`(u, v)` returns

    .. math::
        \\mathbb{E}[\\phi(u)\\phi(v)] \\quad\\text{and}\\quad \\mathbb{E}[\\phi'(u)\\phi'(v)].

    The kernel map is then the same for all (Lee et al. 2018, eq. 5; Jacot et al. 2018,
    Theorem 1): :math:`K' = \\mathbb{E}[\\phi(u)\\phi(v)]` and
    :math:`\\Theta' = \\Theta \\cdot \\mathbb{E}[\\phi'(u)\\phi'(v)]`, with the output variances from
    the same dual at correlation 1.

    On images the map acts on every pair of positions (p, p') alike (Novak et al. 2019, eq. 7),
    the self-pairs at correlation 1 being the (p, p) entries of an example's self-covariance.
    """

    diagonal_layout = True

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dual(self, pair: GaussianPair, derivative: bool) -> tuple[torch.Tensor, torch.Tensor | float | None]:
        """``(E[phi(u) phi(v)], E[phi'(u) phi'(v)])``; the second only when ``derivative``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def kernel_map(self, k: Kernels) -> Kernel:
        k = single(k, self.name)
        require_gaussian(k, self.name)
        nngp, ntk = self.duals(GaussianPair.of_kernel(k), k.ntk)
        n = 0 if k.diagonal else k.spatial_ndim  # diagonal layout: variances only, as vectors
        var1, var2 = output_variances(k, nngp, self._variance if n == 0 else lambda v: self._covariance(v, n))
        return k.replace(
            nngp=nngp,
            ntk=ntk,
            var1=var1,
            var2=var2,
            is_gaussian=False,
            centred=False,
        )

    def duals(self, pair: GaussianPair, ntk: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The map of one block: :math:`K' = \\mathbb{E}[\\phi(u)\\phi(v)]` and
        :math:`\\Theta' = \\Theta\\, \\mathbb{E}[\\phi'(u)\\phi'(v)]` (None without ``ntk``), from ``dual``.

        A subclass may compute both in one compiled pass (see :class:`ABReLU`)."""
        nngp, derivative = self.dual(pair, derivative=ntk is not None)
        return nngp, None if ntk is None else ntk * derivative

    def _variance(self, var: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathbb{E}[\\phi(u)^2]` for :math:`u \\sim \\mathcal N(0, \\text{var})`."""
        return self.duals(GaussianPair.of_variance(var), None)[0]

    def _covariance(self, var: torch.Tensor, spatial_ndim: int) -> torch.Tensor:
        """The self-covariances ``(N, *S, *S)`` of the outputs between positions of an image."""
        return self.duals(GaussianPair.of_variance(var, spatial_ndim), None)[0]
