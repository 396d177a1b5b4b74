"""LayerNorm over the features of each example: vectors, and images or sequences per position or whole."""

from __future__ import annotations

import torch

from .._errors import NtkitError
from ..kernel import Kernel
from ._base import Kernels, Layer, single
from ._spatial import self_diagonal, set_self


class LayerNorm(Layer):
    """Normalise each example over some of its axes: :math:`(x - \\bar x) / \\sqrt{\\mathrm{var}(x) + \\epsilon}`.

    No learned scale or shift (as neural-tangents ``LayerNorm``). The mean and variance are
    taken over the axes ``axis`` of the input ``(N, C, *S)``, which must include the channel
    axis 1. At infinite width the channel mean of i.i.d. centred units (``Kernel.centred``:
    after a ``Dense`` or ``Conv``; other inputs are refused) vanishes and their
    empirical variance at position p is the kernel's :math:`v(p) = K(x, x)[p, p]`; the
    normaliser of position p is therefore the mean :math:`w(p)` of :math:`v` over the
    normalised spatial axes (Novak et al. 2020, ``stax.LayerNorm``; Xiao et al. 2020):

    .. math::
        K'(x, x')[p, p'] = \\frac{K(x, x')[p, p']}{\\sqrt{(w(p) + \\epsilon)(w'(p') + \\epsilon)}},
        \\qquad
        \\Theta'(x, x')[p, p'] = \\frac{\\Theta(x, x')[p, p']}{\\sqrt{(w(p) + \\epsilon)(w'(p') + \\epsilon)}},

    the gradient through the normaliser being a rank-one projection, negligible at infinite
    width. With ``axis=1`` (per position) :math:`w(p) = v(p)`; over all features
    (``axis=(1, 2, 3)`` for images) :math:`w = \\frac{1}{|S|}\\sum_p v(p)`, one number per
    example. For vectors :math:`K' = K / \\sqrt{(v_1 + \\epsilon)(v_2 + \\epsilon)}`. ``eps``
    is added to the variance of the finite network, hence to :math:`w` (as in torch's
    ``layer_norm`` and neural-tangents). Gaussian inputs stay Gaussian. Cost per pair of
    examples: :math:`O(|S|^2)`, one division per covariance.

    Parameters
    ----------
    eps : float
        Added to the variance. The default 0 normalises exactly; an example whose features
        (at some position, for ``axis=1``) are all zero then has no direction, and ``kernel``
        raises.
    axis : int or tuple of int
        The axes of the input ``(N, C, *S)`` the statistics are taken over; they must include
        the channels (axis 1), not the batch (axis 0); negative axes count from the end.
        ``1`` (default): the channels at each position of an image or sequence (as
        neural-tangents ``LayerNorm(axis=1)`` on NCHW, or the channels-first LayerNorm of
        ConvNeXt), and all features of a vector. ``(1, 2, 3)`` for images, ``(1, 2)`` for
        sequences: all features of the example (``torch.nn.LayerNorm(x.shape[1:])``). A
        subset such as ``(1, 2)`` of an image normalises over channels and rows per column.

    Shapes
    ------
    Input ``(N, features)``, ``(N, C, L)`` or ``(N, C, H, W)``; output of the same shape.
    """

    diagonal_layout = True

    def __init__(self, eps: float = 0.0, axis: int | tuple[int, ...] = 1):
        super().__init__()
        if not isinstance(eps, (int, float)) or not eps >= 0:
            raise NtkitError(f"LayerNorm: eps must be a number >= 0, got {eps!r}")
        axes = (axis,) if isinstance(axis, int) else tuple(axis) if isinstance(axis, (tuple, list)) else None
        if not axes or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
            raise NtkitError(f"LayerNorm: axis must be an int or a non-empty tuple of ints, got {axis!r}")
        self.eps = float(eps)
        self.axis = axis if isinstance(axis, int) else axes

    def _spatial_axes(self, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The normalised spatial dimensions (0 for the first spatial axis) of inputs
        ``(N, *feature_shape)``, or an error when ``axis`` does not fit them."""
        axes = (self.axis,) if isinstance(self.axis, int) else self.axis
        ndim = len(feature_shape) + 1
        resolved = [a + ndim if a < 0 else a for a in axes]
        shape = ", ".join(["N"] + [str(s) for s in feature_shape])
        where = f"inputs of shape ({shape}) ({ndim} axes, channels on axis 1)"
        if not all(0 <= a < ndim for a in resolved):
            raise NtkitError(f"axis={self.axis!r} does not fit {where}; use axes 1 to {ndim - 1}")
        if len(set(resolved)) != len(resolved):
            raise NtkitError(f"axis={self.axis!r} names an axis twice for {where}")
        if 0 in resolved:
            raise NtkitError(f"axis={self.axis!r} includes the batch axis 0 of {where}; normalise each example alone")
        if 1 not in resolved:
            raise NtkitError(
                f"axis={self.axis!r} leaves out the channel axis 1 of {where}: statistics over positions "
                "alone do not converge at infinite width; include axis 1"
            )
        return tuple(sorted(a - 2 for a in resolved if a >= 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (2, 3, 4):
            raise NtkitError(f"input has shape {tuple(x.shape)}; expected (N, features), (N, C, L) or (N, C, H, W)")
        spatial = self._spatial_axes(tuple(x.shape[1:]))
        normalised = [1] + [2 + d for d in spatial]
        if len(normalised) == x.ndim - 1:  # all features: torch's own layout
            return torch.nn.functional.layer_norm(x, x.shape[1:], eps=self.eps)
        kept = [a for a in range(x.ndim) if a not in normalised]
        moved = x.permute(kept + normalised)
        out = torch.nn.functional.layer_norm(moved, moved.shape[len(kept):], eps=self.eps)
        return out.permute(torch.argsort(torch.tensor(kept + normalised)).tolist())

    def kernel_map(self, k: Kernels) -> Kernel:
        k = single(k, "LayerNorm")
        if not k.centred:
            raise NtkitError(
                "its input units do not have mean zero (it follows an activation, or is the "
                "network's input), so their channel mean does not vanish and this kernel map does "
                "not hold; put LayerNorm after a Dense or Conv"
            )
        spatial_axes = self._spatial_axes(tuple(k.feature_shape))
        if k.spatial_ndim == 0:
            return self._vector_kernel_map(k)
        return self._spatial_kernel_map(k, spatial_axes)

    def _vector_kernel_map(self, k: Kernel) -> Kernel:
        for argument, var in (("x1", k.var1), ("x2", k.var2)):
            if self.eps == 0 and bool((var <= 0).any()):
                raise NtkitError(
                    f"its input is a zero vector (variance 0) for an example of {argument}, which "
                    "cannot be normalised; pass LayerNorm(eps=...) > 0 or remove that example"
                )
        w1, w2 = k.map_variances(lambda v: v + self.eps)
        # One division by sqrt(w1 w2): for an example present in both batches (k = v1 = v2)
        # this is v / sqrt(fl(w w)) = v / w exactly (IEEE), the same number as its variance,
        # so that it keeps correlation exactly 1 for the nonlinearities after it.
        denominator = (w1[:, None] * w2[None, :]).sqrt_()
        var1, var2 = k.map_variances(lambda v: v / (v + self.eps))
        nngp = k.nngp / denominator
        if k.same_inputs:
            nngp.diagonal().copy_(var1)
        return k.replace(
            nngp=nngp,
            ntk=None if k.ntk is None else k.ntk / denominator,
            var1=var1,
            var2=var2,
        )

    def _normalisers(self, var: torch.Tensor, n: int, spatial_axes: tuple[int, ...], argument: str) -> torch.Tensor:
        """:math:`w(p) + \\epsilon`, shape (N, *S): the per-position variances averaged over the
        normalised spatial axes; an error where they vanish and ``eps`` is 0."""
        w = var if var.ndim == 1 + n else self_diagonal(var, n)  # the diagonal layout holds w itself
        if spatial_axes:
            w = w.mean(dim=[1 + d for d in spatial_axes], keepdim=True).expand_as(w)
        if self.eps == 0 and bool((w <= 0).any()):
            position = tuple(int(i) for i in (w <= 0).nonzero()[0, 1:])
            where = "all positions" if len(spatial_axes) == n else f"position {position}"
            raise NtkitError(
                f"its input is zero (variance 0) at {where} of an example of {argument}, which cannot "
                f"be normalised over axis={self.axis!r}; pass LayerNorm(eps=...) > 0, add a bias "
                "before it, or remove that example"
            )
        return w + self.eps

    def _spatial_kernel_map(self, k: Kernel, spatial_axes: tuple[int, ...]) -> Kernel:
        """Image and sequence kernels ``(N1, N2, *S, *S)``: divide entry [i, j, p, p'] by
        :math:`\\sqrt{(w_i(p) + \\epsilon)(w_j(p') + \\epsilon)}`.

        The output variances are computed with the same operations as the NNGP (one
        division by the square root of a product), so that identical examples in the two
        batches keep exactly equal statistics, and ``v / sqrt(v v) = 1`` exactly on the
        per-position diagonal for ``eps = 0``."""
        n = k.spatial_ndim
        w1 = self._normalisers(k.var1, n, spatial_axes, "x1")
        w2 = w1 if k.same_inputs else self._normalisers(k.var2, n, spatial_axes, "x2")
        # the other position's axes; none in the diagonal layout, where a pair shares its position
        other = () if k.diagonal else (1,) * n

        def first(w):  # w (N, *S) at the first position of a pair
            return w.reshape(*w.shape, *other)

        def second(w):  # w at the second position of a pair
            return w.reshape(w.shape[0], *other, *w.shape[1:])

        denominator = (first(w1)[:, None] * second(w2)[None, :]).sqrt_()
        var1 = k.var1 / (first(w1) * second(w1)).sqrt_()
        var2 = var1 if k.same_inputs else k.var2 / (first(w2) * second(w2)).sqrt_()
        nngp = k.nngp / denominator
        if k.same_inputs:
            set_self(nngp, var1)
        return k.replace(
            nngp=nngp,
            ntk=None if k.ntk is None else k.ntk / denominator,
            var1=var1,
            var2=var2,
        )

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}, axis={self.axis!r}"
