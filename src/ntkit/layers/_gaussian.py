"""Bookkeeping shared by every nonlinearity: two jointly Gaussian pre-activations per pair."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property

import torch

from ..kernel import Kernel
from ._spatial import paired_diagonal, self_diagonal


class GaussianPair:
    """The pre-activations :math:`(u, v) = (z(x_i), z(x'_j))` of all pairs in a block.

    :math:`(u, v)` is a centred Gaussian with covariance
    :math:`\\begin{pmatrix} v_1 & k \\\\ k & v_2 \\end{pmatrix}` where ``k = cov``,
    ``v1 = var1``, ``v2 = var2`` broadcast against each other. A nonlinearity's dual reads the
    statistics it needs; derived ones are computed once, on first use.

    ``self_pairs`` says which pairs are an example with itself: ``"none"``, ``"all"`` (a
    vector of variances) or ``"view"``: ``self_view(t)``, a view of a tensor shaped like ``cov``,
    holds exactly those entries (``cov[i, i]`` of a same-inputs block; for images its
    (i, i, p, p) entries, or the (p, p) entries of a self-covariance). There the correlation is
    exactly 1, whatever the rounding of ``cov``: near correlation 1 the arc-cosine kernels'
    derivative terms have infinite slope, so a rounded correlation of :math:`1 - \\epsilon`
    would cost :math:`\\sqrt{\\epsilon}` in accuracy. Writing them through a view costs
    O(N |S|), not a pass over the block.

    Pre-activations of zero variance (a zero input with no bias) are the constant 0; their
    correlation with anything is taken as 0, so that ``norm_product * f(correlation)`` is 0.
    """

    def __init__(
        self,
        cov: torch.Tensor,
        var1: torch.Tensor,
        var2: torch.Tensor,
        self_pairs: str,
        self_view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.cov, self.var1, self.var2, self.self_pairs, self.self_view = cov, var1, var2, self_pairs, self_view
        #: The same pairs as rows, for compiled duals (``ntkit._compiled.relu``): ``(cov, var1,
        #: var2, mode, exact)`` with ``cov`` (B1, B2, P, Q) and variances (B, P), (B, Q); or None.
        self.rows = None

    @classmethod
    def of_kernel(cls, k: Kernel) -> "GaussianPair":
        """All pairs (i, j) of a Kernel's two batches (and, for images, all pairs (p, p'))."""
        n = k.spatial_ndim
        n1, n2 = k.nngp.shape[:2]
        if n == 0:
            # Vectors: no rows, so the torch form. It is about as fast there, and the compiled
            # loops would cost a fully-connected kernel Numba's start-up (~1 s, ~100 MB).
            var1, var2 = k.var1[:, None], k.var2[None, :]
            rows = None
        elif k.diagonal:  # equal positions only: cov (N1, N2, *S), variances (N, *S)
            var1, var2 = k.var1.unsqueeze(1), k.var2.unsqueeze(0)
            rows = (k.nngp.reshape(n1, n2, 1, -1), k.var1.reshape(n1, -1), k.var2.reshape(n2, -1), "diagonal")
        else:
            spatial, ones = tuple(k.feature_shape[1:]), (1,) * n
            d1 = self_diagonal(k.var1, n)
            d2 = d1 if k.same_inputs else self_diagonal(k.var2, n)
            var1 = d1.reshape(d1.shape[0], 1, *spatial, *ones)
            var2 = d2.reshape(1, d2.shape[0], *ones, *spatial)
            positions = math.prod(spatial)
            rows = (k.nngp.reshape(n1, n2, positions, positions), d1.reshape(n1, -1), d2.reshape(n2, -1), "cross")
        if not k.same_inputs:
            pair = cls(k.nngp, var1, var2, "none")
        else:
            paired = 0 if k.diagonal else n  # (i, i) pairs, and (p, p) pairs in the full layout
            pair = cls(k.nngp, var1, var2, "view", lambda t: paired_diagonal(t.diagonal(0, 0, 1), 0, paired))
        pair.rows = None if rows is None else (*rows, k.same_inputs)
        return pair

    @classmethod
    def of_variance(cls, var: torch.Tensor, spatial_ndim: int = 0) -> "GaussianPair":
        """Each example with itself, to compute the output variances (for images: every pair of
        positions of an example, ``var`` of shape (N, *S, *S); in the diagonal layout, ``var``
        of shape (N, *S) holds variances only and ``spatial_ndim`` is 0)."""
        if spatial_ndim == 0:
            return cls(var, var, var, "all")
        spatial, ones = tuple(var.shape[1 : 1 + spatial_ndim]), (1,) * spatial_ndim
        diagonal = self_diagonal(var, spatial_ndim)
        var1 = diagonal.reshape(var.shape[0], *spatial, *ones)
        var2 = diagonal.reshape(var.shape[0], *ones, *spatial)
        pair = cls(var, var1, var2, "view", lambda t: paired_diagonal(t, 1, spatial_ndim))
        n, positions = var.shape[0], math.prod(spatial)
        flat = diagonal.reshape(n, positions)
        pair.rows = (var.reshape(n, 1, positions, positions), flat, flat, "self", True)
        return pair

    @cached_property
    def std1(self) -> torch.Tensor:
        return self.var1.sqrt()

    @cached_property
    def std2(self) -> torch.Tensor:
        return self.var2.sqrt()

    @cached_property
    def norm_product(self) -> torch.Tensor:
        """:math:`\\sqrt{v_1 v_2}`."""
        if self.self_pairs == "all":
            return self.var1
        return (self.var1 * self.var2).sqrt_()

    @cached_property
    def correlation(self) -> torch.Tensor:
        """:math:`c = k / \\sqrt{v_1 v_2}` in [-1, 1] (rounding can push |c| past 1)."""
        if self.self_pairs == "all":
            return (self.var1 > 0).to(self.var1.dtype)
        # k / sqrt(v1 v2) rounds to exactly 1 when k = v1 = v2 (IEEE: sqrt(fl(v*v)) = |v|), so
        # identical inputs in different batches keep correlation 1 too.
        c = self.cov / self.norm_product
        if bool((self.var1 <= 0).any()) or bool((self.var2 <= 0).any()):
            c = torch.where(self.norm_product > 0, c, torch.zeros((), dtype=c.dtype, device=c.device))
        c.clamp_(-1.0, 1.0)
        if self.self_pairs == "view":
            self.self_view(c).copy_(self.self_view(self.norm_product) > 0)
        return c

    @cached_property
    def angle(self) -> torch.Tensor:
        """:math:`\\theta = \\arccos c \\in [0, \\pi]`."""
        return torch.arccos(self.correlation)

    def decorrelated(self) -> torch.Tensor:
        """:math:`v_1 v_2 - k^2 = v_1 v_2 (1 - c^2)`, a new tensor: from the correlation, so
        without the cancellation of two products of size :math:`v^2` (at large variances it
        would leave only rounding), and exactly 0 where the correlation is exactly 1."""
        c = self.correlation
        return (self.var1 * self.var2) * (1 - c * c)

    @cached_property
    def sine(self) -> torch.Tensor:
        """:math:`\\sin\\theta = \\sqrt{1 - c^2}` (|c| <= 1, so 1 - c^2 >= 0 after rounding)."""
        c = self.correlation
        return torch.addcmul(torch.ones((), dtype=c.dtype, device=c.device), c, c, value=-1.0).sqrt_()
