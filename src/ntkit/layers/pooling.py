"""Pooling over positions: AvgPool, SumPool (windows) and GlobalAvgPool, GlobalSumPool (all)."""

from __future__ import annotations

import math

import torch

from .._errors import NtkitError
from ..kernel import Kernel
from ._base import Kernels, Layer, single
from ._spatial import as_tuple, check_padding, geometry, linear_map, nhwc_hint, window_sum


def _require_spatial(k: Kernel, layer: str, n: int | None = None) -> int:
    """The number of spatial dimensions of ``k``; an error for vectors or the wrong rank."""
    if k.spatial_ndim == 0 or (n is not None and k.spatial_ndim != n):
        expected = {None: "(N, C, L) or (N, C, H, W)", 1: "(N, C, L)", 2: "(N, C, H, W)"}[n]
        raise NtkitError(f"{layer} needs inputs {expected}; got features of shape {k.feature_shape} per example")
    if k.diagonal:  # the engine never chooses that layout for networks with pooling
        raise NtkitError(f"{layer} needs the covariances between different positions (spatial_layout='full')")
    return k.spatial_ndim


class _WindowPool(Layer):
    """Sum over windows of positions, scaled by ``scale(window size)`` (AvgPool, SumPool).

    The pooled output :math:`y(q) = c \\sum_{t} x(s q + t)` is linear, so its kernel sums the
    input kernel over the window *independently* along each axis of a pair (Novak et al. 2019,
    Section 3.2; neural-tangents ``stax.AvgPool``):

    .. math:: K'(q, q') = c^2 \\sum_{t, t'} K(s q + t, s q' + t'),

    and the same for :math:`\\Theta`: pooling has no parameters. Zero padding ("same") counts in
    the window, as in neural-tangents with ``normalize_edges=False``, unless ``AvgPool``
    is told otherwise (``count_include_pad=False``): the scale is then a per-position
    :math:`c(q)` and :math:`K'(q, q') = c(q)\\, c(q') \\sum_{t, t'} K(s q + t, s q' + t')`.
    Cost per pair of examples: :math:`O(|w|\\, |S|^2)`. Gaussian inputs stay Gaussian.
    """

    takes_images = True

    def __init__(self, window_shape, strides=None, padding: str = "valid"):
        super().__init__()
        n = 1 if isinstance(window_shape, int) else len(tuple(window_shape))
        if n not in (1, 2):
            raise NtkitError(f"{self.name}: window_shape must have 1 or 2 entries, got {window_shape!r}")
        self.window_shape = as_tuple(window_shape, n, "window_shape", self.name)
        self.strides = as_tuple(self.window_shape if strides is None else strides, n, "strides", self.name)
        self.padding = check_padding(padding, self.name)

    def _scale(self) -> float:
        raise NotImplementedError

    def _edge_scales(self, spatial, geom, like: torch.Tensor) -> list[torch.Tensor] | None:
        """Per-dimension scales of the output positions, shapes ``(S'_d,)``, that replace
        ``_scale`` (their product over dimensions is :math:`c(q)`); None for the constant one."""
        return None

    def _geometry(self, feature_shape):
        return geometry(
            feature_shape[1:], self.window_shape, self.strides, self.padding, f"{self.name}", nhwc_hint(feature_shape)
        )

    def _pool(self, t: torch.Tensor, first_axis: int, geom, compiled: bool = False) -> torch.Tensor:
        for d, g in enumerate(geom):
            t = window_sum(t, first_axis + d, self.window_shape[d], self.strides[d], g, self.padding, compiled)
        return t

    @staticmethod
    def _scaled(t: torch.Tensor, first_axis: int, scales: list[torch.Tensor]) -> torch.Tensor:
        """``t`` times ``scales[d]`` along axis ``first_axis + d`` of each spatial dimension d."""
        for d, scale in enumerate(scales):
            shape = [1] * t.ndim
            shape[first_axis + d] = -1
            t = t.mul_(scale.reshape(shape))
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.window_shape)
        if x.ndim != n + 2:
            raise NtkitError(f"input has shape {tuple(x.shape)}; a {n}-D window needs {n} spatial axes")
        geom = self._geometry(tuple(x.shape[1:]))
        scales = self._edge_scales(tuple(x.shape[2:]), geom, x)
        if scales is None:
            return self._pool(x, 2, geom).mul_(self._scale())
        return self._scaled(self._pool(x, 2, geom), 2, scales)

    def kernel_map(self, k: Kernels) -> Kernel:
        k = single(k, self.name)
        n = _require_spatial(k, self.name, len(self.window_shape))
        geom = self._geometry(k.feature_shape)
        scale2 = self._scale() ** 2
        scales = self._edge_scales(tuple(k.feature_shape[1:]), geom, k.nngp)

        def pool(t: torch.Tensor, offset: int) -> torch.Tensor:
            t = self._pool(self._pool(t, offset, geom, compiled=True), offset + n, geom, compiled=True)
            if scales is None:
                return t.mul_(scale2)
            return self._scaled(self._scaled(t, offset, scales), offset + n, scales)

        return linear_map(k, pool, feature_shape=(k.feature_shape[0],) + tuple(g[0] for g in geom))

    def extra_repr(self) -> str:
        return f"window_shape={self.window_shape}, strides={self.strides}, padding={self.padding!r}"


def _in_image_counts(size: int, window: int, stride: int, geom, like: torch.Tensor) -> torch.Tensor:
    """How many cells of each output position's window lie inside an axis of length ``size``
    (zero padding), shape ``(out,)``: the same window sum as the pooling, over ones."""
    ones = torch.ones(size, dtype=like.dtype, device=like.device)
    return window_sum(ones, 0, window, stride, geom, "same")


class AvgPool(_WindowPool):
    """Average over windows of positions: :math:`y(q) = \\frac{1}{|w|}\\sum_t x(s q + t)`.

    See :class:`_WindowPool` for the kernel map (:math:`c = 1/|w|`).

    Parameters
    ----------
    window_shape : int or tuple of int
        ``(w,)`` (or the int w) for sequences, ``(wh, ww)`` for images.
    strides : int or tuple of int, optional
        Default: the window (non-overlapping windows).
    padding : "valid" (default), "same" or "circular"
    count_include_pad : bool
        With ``padding="same"``, whether the zeros padded at the edges count in the average
        (default True: divide every window by :math:`|w|`, as neural-tangents
        ``normalize_edges=False``). False divides each window by the number :math:`n(q)` of its
        cells inside the image, as ``torch.nn.functional.avg_pool2d(count_include_pad=False)``
        and neural-tangents ``normalize_edges=True``; the kernel map then uses
        :math:`c(q) = 1 / n(q)` on each side of a pair. "valid" and "circular" pad no zeros,
        so it changes nothing there.

    Shapes
    ------
    Input ``(N, C, *S)``, output ``(N, C, *S')``.
    """

    def __init__(self, window_shape, strides=None, padding: str = "valid", count_include_pad: bool = True):
        super().__init__(window_shape, strides, padding)
        if not isinstance(count_include_pad, bool):
            raise NtkitError(f"AvgPool: count_include_pad must be True or False, got {count_include_pad!r}")
        self.count_include_pad = count_include_pad

    def _scale(self) -> float:
        return 1.0 / math.prod(self.window_shape)

    def _edge_scales(self, spatial, geom, like: torch.Tensor) -> list[torch.Tensor] | None:
        if self.count_include_pad or self.padding != "same":
            return None
        return [
            _in_image_counts(size, w, s, g, like).reciprocal_()
            for size, w, s, g in zip(spatial, self.window_shape, self.strides, geom)
        ]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", count_include_pad={self.count_include_pad}"


class SumPool(_WindowPool):
    """Sum over windows of positions: :math:`y(q) = \\sum_t x(s q + t)`; as :class:`AvgPool`
    with :math:`c = 1`."""

    def _scale(self) -> float:
        return 1.0


class _GlobalPool(Layer):
    """Pool over all positions: ``(N, C, *S) -> (N, C)``, scaled by ``scale(|S|)``.

    .. math:: K'(x, x') = c^2 \\sum_{p, p'} K(x, x')[p, p'],

    the same for :math:`\\Theta` (Novak et al. 2019, eq. 11; Arora et al. 2019, eq. 9).
    Cost per pair: :math:`O(|S|^2)`. Gaussian inputs stay Gaussian.
    """

    takes_images = True

    def _scale(self, positions: int) -> float:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3:
            raise NtkitError(f"input has shape {tuple(x.shape)}; expected (N, C, L) or (N, C, H, W)")
        return x.flatten(2).sum(-1).mul_(self._scale(math.prod(x.shape[2:])))

    def kernel_map(self, k: Kernels) -> Kernel:
        k = single(k, self.name)
        _require_spatial(k, self.name)
        scale2 = self._scale(math.prod(k.feature_shape[1:])) ** 2

        def pool(t: torch.Tensor, offset: int) -> torch.Tensor:
            return t.flatten(offset).sum(-1).mul_(scale2)

        return linear_map(k, pool, feature_shape=(k.feature_shape[0],))


class GlobalAvgPool(_GlobalPool):
    """Average over all positions: ``(N, C, *S) -> (N, C)``, :math:`c = 1/|S|`
    (see :class:`_GlobalPool`)."""

    def _scale(self, positions: int) -> float:
        return 1.0 / positions


class GlobalSumPool(_GlobalPool):
    """Sum over all positions: ``(N, C, *S) -> (N, C)``, :math:`c = 1` (see :class:`_GlobalPool`)."""

    def _scale(self, positions: int) -> float:
        return 1.0
