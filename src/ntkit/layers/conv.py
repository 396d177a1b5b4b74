"""Conv: the convolution over sequences (NCL) and images (NCHW), in both parameterizations."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .. import _compiled
from .._errors import NtkitError
from .._inputs import Inputs
from ..kernel import Kernel
from ._base import Kernels, Layer, single
from ._spatial import (
    as_tuple, check_padding, diagonal_window_sum, filter_taps, geometry, nhwc_hint, output_variances, pad_axis,
    self_pairs, window_sum,
)
from .dense import affine_kernels, check_parameterization, check_std, draw_parameters, scaled_parameters

_CONVOLUTIONS = {1: nn.functional.conv1d, 2: nn.functional.conv2d}

#: Images of at most this many positions take the padded-plane compiled path of 3x3 filters:
#: a third or more of their entries are edges, and a padded copy of the block stays in cache.
SMALL_PLANE = 16 * 16


class Conv(LazyModuleMixin, Layer):
    """Convolution :math:`z_i(p) = \\sum_{j, t} W_{ijt}\\, x_j(s p + t) + b_i` over 1 or 2 spatial axes.

    The number of spatial dimensions is the length of ``filter_shape``: ``(k,)`` for sequences
    ``(N, C, L)``, ``(kh, kw)`` for images ``(N, C, H, W)``. The fan-in is
    :math:`n = C_{in} \\prod_d k_d`; the parameterizations are those of :class:`~ntkit.Dense`
    with that fan-in ("ntk": :math:`W, b \\sim \\mathcal N(0, 1)` scaled by
    :math:`\\sigma_w / \\sqrt n` and :math:`\\sigma_b` in the forward pass; "standard": the scales
    in the initialization).

    Kernel map (Novak et al. 2019, eq. 8; Arora et al. 2019, eqs. 7-8; Xiao et al. 2018): with
    :math:`\\mathcal A` the average of shifted copies over the filter window along the paired
    axes of each spatial dimension,
    :math:`[\\mathcal A K](p, p') = \\frac{1}{|k|} \\sum_t K(s p + t, s p' + t)`
    (zero outside the image for "same" and "valid" padding, periodic for "circular"),

    .. math::
        K' = \\sigma_w^2 \\mathcal A K + \\sigma_b^2, \\qquad
        \\Theta' = \\begin{cases}
            K' + \\sigma_w^2 \\mathcal A \\Theta & \\text{ntk} \\\\
            n\\, \\mathcal A K + 1 + \\sigma_w^2 \\mathcal A \\Theta & \\text{standard}
        \\end{cases}

    (the ``+1`` only with a bias). Cost per pair of examples: :math:`O(|k|\\, |S|^2)`.

    Parameters
    ----------
    out_channels : int
        Channels of the finite network (the kernel does not depend on them, except through a
        following standard-parameterization layer).
    filter_shape : int or tuple of int
        ``(k,)`` (or the int k) for sequences, ``(kh, kw)`` for images.
    strides : int or tuple of int, optional
        Default 1.
    padding : "valid" (default), "same" or "circular"
        "same" and "circular" give ``ceil(size / stride)`` output positions, padding with zeros
        or periodically; "valid" does not pad.
    W_std, b_std, parameterization
        As in :class:`~ntkit.Dense`; ``b_std=None`` means no bias.
    in_channels : int, optional
        By default inferred at the first forward pass.

    Shapes
    ------
    Input ``(N, in_channels, *S)``, output ``(N, out_channels, *S')``.
    """

    diagonal_layout = True

    takes_images = True

    cls_to_become = None

    def __init__(
        self,
        out_channels: int,
        filter_shape,
        strides=None,
        padding: str = "valid",
        W_std: float = 1.0,
        b_std: float | None = None,
        parameterization: str = "ntk",
        in_channels: int | None = None,
    ):
        super().__init__()
        name = self.name
        if not isinstance(out_channels, int) or out_channels < 1:
            raise NtkitError(f"{name}: out_channels must be a positive integer, got {out_channels!r}")
        n = 1 if isinstance(filter_shape, int) else len(tuple(filter_shape))
        if n not in _CONVOLUTIONS:
            raise NtkitError(f"{name}: filter_shape must have 1 or 2 entries, got {filter_shape!r}")
        self.out_channels = out_channels
        self.filter_shape = as_tuple(filter_shape, n, "filter_shape", name)
        self.strides = as_tuple(1 if strides is None else strides, n, "strides", name)
        self.padding = check_padding(padding, name)
        self.W_std = check_std(W_std, "W_std", name, allow_none=False)
        self.b_std = check_std(b_std, "b_std", name, allow_none=True)
        self.parameterization = check_parameterization(parameterization, name)
        self.in_channels = 0
        if in_channels is None:
            self.weight = UninitializedParameter()
        else:
            self.in_channels = int(in_channels)
            self.weight = nn.Parameter(torch.empty(out_channels, self.in_channels, *self.filter_shape))
        self.bias = None if self.b_std is None else nn.Parameter(torch.empty(out_channels))
        if in_channels is not None:
            self.reset_parameters()

    @property
    def fan_in(self) -> int:
        return self.in_channels * math.prod(self.filter_shape)

    def _check_features(self, feature_shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
        """The per-dimension geometry, or an error for input of the wrong rank or too small."""
        n = len(self.filter_shape)
        if len(feature_shape) != n + 1:
            expected = "(N, C, L)" if n == 1 else "(N, C, H, W)"
            raise NtkitError(
                f"a filter of shape {self.filter_shape} needs inputs {expected}; got features of "
                f"shape {tuple(feature_shape)} per example"
            )
        window = f"{self.name} filter"
        return geometry(
            feature_shape[1:], self.filter_shape, self.strides, self.padding, window, nhwc_hint(feature_shape)
        )

    def _check_kernel_input(self, feature_shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
        """``_check_features`` for the kernel face, and the channels it was built for."""
        geom = self._check_features(feature_shape)
        if self.in_channels and feature_shape[0] != self.in_channels:
            raise NtkitError(
                f"its input has {feature_shape[0]} channels, but it was built for {self.in_channels}"
                f"{nhwc_hint(feature_shape)}"
            )
        return geom

    # -- finite face -------------------------------------------------------------------------

    def initialize_parameters(self, x: torch.Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            if x.ndim != len(self.filter_shape) + 2:
                self._check_features(tuple(x.shape[1:]))
            self.in_channels = int(x.shape[1])
            with torch.no_grad():
                shape = (self.out_channels, self.in_channels, *self.filter_shape)
                self.weight.materialize(shape, dtype=x.dtype, device=x.device)
                if self.bias is not None:
                    self.bias.data = self.bias.data.to(dtype=x.dtype, device=x.device)
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the parameters from the initialization of the chosen parameterization."""
        draw_parameters(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        geom = self._check_features(tuple(x.shape[1:]))
        if x.shape[1] != self.in_channels:
            raise NtkitError(
                f"input has shape {tuple(x.shape)}; expected {self.in_channels} channels on axis 1"
                f"{nhwc_hint(tuple(x.shape[1:]))}"
            )
        for d, (_, lo, hi) in enumerate(geom):
            x = pad_axis(x, 2 + d, lo, hi, self.padding)
        weight, bias = scaled_parameters(self)
        return _CONVOLUTIONS[len(self.filter_shape)](x, weight, bias, stride=self.strides)

    # -- kernel face -------------------------------------------------------------------------

    def kernel_map(self, k: Kernels) -> Kernel:
        k = single(k, "Conv")
        geom = self._check_kernel_input(k.feature_shape)
        n = len(self.filter_shape)
        window = math.prod(self.filter_shape)

        def summed(t: torch.Tensor, offset: int) -> torch.Tensor:
            """:math:`|w| \\mathcal A t`, the window sum, for a tensor whose first spatial axis is
            ``offset`` (``affine_kernels`` divides by the window size |w|).

            In the diagonal layout the paired axes are one axis, and the shifts along the
            diagonal are plain window sums."""
            for d in range(n):
                if k.diagonal:
                    t = window_sum(t, offset + d, self.filter_shape[d], self.strides[d], geom[d], self.padding, compiled=True)
                else:
                    axes = (offset + d, offset + n + d)
                    t = diagonal_window_sum(t, axes, self.filter_shape[d], self.strides[d], geom[d], self.padding, compiled=True)
            return t

        fan_in = k.feature_shape[0] * window
        if self._fused(k):
            nngp, ntk = self._fused_map(k.nngp, k.ntk, geom, fan_in)
            var1, var2 = output_variances(k, nngp, lambda v: self._fused_map(v, None, geom, fan_in)[0])
        else:
            nngp, ntk = affine_kernels(
                summed(k.nngp, 2), None if k.ntk is None else summed(k.ntk, 2), self.W_std, self.b_std,
                self.parameterization, fan_in, window, fresh=True,
            )
            var1, var2 = output_variances(k, nngp, lambda v: self._affine(summed(v, 1), window, fresh=True))
        return k.replace(
            nngp=nngp,
            ntk=ntk,
            var1=var1,
            var2=var2,
            feature_shape=(self.out_channels,) + tuple(g[0] for g in geom),
            is_gaussian=True,
            centred=True,
            sources=frozenset({id(self)}),
        )

    def map_inputs(self, inputs: Inputs) -> Kernels:
        """The kernel of a first ``Conv`` from its inputs' patches, in the full layout.

        There :math:`|k|\\, \\mathcal A K` of the inputs' kernel is a dot product of patches,
        :math:`\\sum_{c, t} x_c(s p + t)\\, x'_c(s p' + t) / C` (the filter's window at each output
        position, over all channels): matrix products of patches instead of the inputs' kernel
        and its window sums, about ten times fewer operations on 3-channel images. The
        self-covariances are the block's own self-pairs when ``x2`` is ``x1``, twins get exactly
        +-variance (as in ``input_kernel``), and the affine map is the one of ``kernel_map``. In
        the diagonal layout (cheap already), and for a subclass with its own kernel map
        (``ConvLocal``), ``Layer.map_inputs``."""
        x1 = inputs.x1
        own_map = type(self).kernel_map is Conv.kernel_map
        if not own_map or inputs.spatial_layout != "full" or x1.ndim != len(self.filter_shape) + 2:
            return super().map_inputs(inputs)
        geom = self._check_kernel_input(tuple(x1.shape[1:]))
        window, channels = math.prod(self.filter_shape), x1.shape[1]
        summed, self1, self2 = self.patch_sums(inputs, geom)
        nngp, ntk = affine_kernels(  # the inputs' NTK is zero
            summed, torch.zeros_like(summed) if inputs.with_ntk else None, self.W_std, self.b_std,
            self.parameterization, channels * window, window, fresh=True,
        )
        if inputs.same_inputs:
            var1 = var2 = self_pairs(nngp).contiguous()
        else:
            var1, var2 = (self._affine(v, window, fresh=True) for v in (self1, self2))
        return Kernel(
            nngp=nngp,
            ntk=ntk,
            var1=var1,
            var2=var2,
            feature_shape=(self.out_channels, *(g[0] for g in geom)),
            same_inputs=inputs.same_inputs,
            is_gaussian=True,
            centred=True,
            sources=frozenset({id(self)}),
        )

    def patch_sums(self, inputs: Inputs, geom) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:math:`|k|\\, \\mathcal A K` of the inputs' kernel from their patches (see ``map_inputs``):
        for the pairs (N1, N2, *S', *S'), twins exactly +-variance, and, unless ``x2`` is ``x1``
        (then they are the pairs' self-pairs), for each batch's examples with themselves
        (N, *S', *S')."""
        x1, x2 = inputs.x1, inputs.x2
        channels, out_spatial = x1.shape[1], tuple(g[0] for g in geom)
        patches1 = self._patches(x1, geom)
        patches2 = patches1 if inputs.same_inputs else self._patches(x2, geom)
        # the inputs' kernel is x.x'/C: the first factor divided, not the (much larger) products
        summed = _gram(patches1 / channels, patches2).reshape(x1.shape[0], x2.shape[0], *out_spatial, *out_spatial)
        self1 = self2 = None
        if not inputs.same_inputs:
            self1, self2 = (
                torch.bmm(p / channels, p.transpose(1, 2)).reshape(p.shape[0], *out_spatial, *out_spatial)
                for p in (patches1, patches2)
            )
        if inputs.twins is not None:
            first = self_pairs(summed) if inputs.same_inputs else self1
            summed = inputs.twins.exact(summed, first.clone())
        return summed, self1, self2

    def _patches(self, x: torch.Tensor, geom) -> torch.Tensor:
        """(N, P', C |k|): the (padded) inputs under the filter at each of the P' output positions,
        as the finite face's convolution reads them."""
        n = len(self.filter_shape)
        for d, (_, lo, hi) in enumerate(geom):
            x = pad_axis(x, 2 + d, lo, hi, self.padding)
        for d, (size, stride) in enumerate(zip(self.filter_shape, self.strides)):
            x = x.unfold(2 + d, size, stride)  # (N, C, *S', *k) once all axes are unfolded
        order = [0, *range(2, 2 + n), 1, *range(2 + n, 2 + 2 * n)]
        return x.permute(order).reshape(x.shape[0], math.prod(x.shape[2 : 2 + n]), -1)

    def _fused(self, k: Kernel) -> bool:
        """Whether the map runs as one compiled pass (``ntkit._compiled.conv``): 2-D images in
        the full layout, CPU tensors."""
        tensors = (k.nngp, k.var1) if k.ntk is None else (k.nngp, k.ntk, k.var1)
        return len(self.filter_shape) == 2 and not k.diagonal and _compiled.enabled(*tensors)

    def _fused_map(self, nngp: torch.Tensor, ntk: torch.Tensor | None, geom, fan_in: int):
        """``(K', Theta')`` of (..., H, W, H, W) tensors by ``ntkit._compiled.conv``: on small
        images (3x3 filters, unit strides) from inputs padded on the four position axes, else
        with the taps skipped at the edges ("circular": from inputs padded periodically)."""
        b2 = None if self.b_std is None else self.b_std**2
        out_size = tuple(g[0] for g in geom)
        prepare, taps, padded = self._compiled_source(tuple(nngp.shape[-2:]), geom)
        nngp, ntk = (None if t is None else prepare(t) for t in (nngp, ntk))
        if padded:
            return _compiled.conv_padded_planes(nngp, ntk, out_size, self.W_std**2, b2, self.parameterization == "ntk", fan_in)
        return _compiled.conv_kernels(
            nngp, ntk, out_size, taps, self.strides, math.prod(self.filter_shape), self.W_std**2, b2,
            self.parameterization == "ntk", fan_in,
        )

    def _compiled_source(self, spatial: tuple[int, int], geom):
        """How the compiled map reads a (..., H, W, H, W) tensor: ``(prepare, taps, padded)``.

        ``padded``: small images (at most ``SMALL_PLANE`` positions, 3x3 filters, unit strides),
        which ``prepare`` pads on the four position axes (zeros, or periodically), every tap then
        inside. Else ``taps`` holds, per axis, the (source, target, count) of each tap that
        reaches the image, and ``prepare`` pads only "circular" inputs (periodically)."""
        if self.filter_shape == (3, 3) and self.strides == (1, 1) and math.prod(spatial) <= SMALL_PLANE:
            return (lambda t: _padded(t, geom, self.padding)), None, True
        prepare = (lambda t: t)
        if self.padding == "circular":
            padding = geom
            prepare = (lambda t: _circular(t, padding))
            spatial = tuple(size + lo + hi for size, (_, lo, hi) in zip(spatial, geom))
            geom = [(out, 0, 0) for out, _, _ in geom]
        taps = [
            [(source.start, target.start, target.stop - target.start) for source, target in filter_taps(size, w, s, g)]
            for size, w, s, g in zip(spatial, self.filter_shape, self.strides, geom)
        ]
        return prepare, taps, False

    def _affine(self, var: torch.Tensor, window: int = 1, fresh: bool = False) -> torch.Tensor:
        """The output variances: the NNGP part of :func:`affine_kernels`, with the same operations
        (and the same ``window`` and ``fresh`` as the cross-covariances)."""
        return affine_kernels(var, None, self.W_std, self.b_std, self.parameterization, 0, window, fresh)[0]

    def extra_repr(self) -> str:
        bias = "None" if self.b_std is None else f"{self.b_std:g}"
        return (
            f"out_channels={self.out_channels}, filter_shape={self.filter_shape}, strides={self.strides}, "
            f"padding={self.padding!r}, W_std={self.W_std:g}, b_std={bias}, "
            f"parameterization={self.parameterization!r}"
        )


def _gram(patches1: torch.Tensor, patches2: torch.Tensor) -> torch.Tensor:
    """(N1, N2, P, P): the dot products of every patch of every image of one batch with every
    patch of every image of the other. On the CPU (autograd off): one batched product per image
    of the first batch, written in place (3x faster than one product of all patches and its
    reordering copy on 8x8 images, 2x on 32x32). GPUs and autograd: that one product, reordered."""
    n1, n2, positions = patches1.shape[0], patches2.shape[0], patches1.shape[1]
    tracked = torch.is_grad_enabled() and (patches1.requires_grad or patches2.requires_grad)
    if tracked or patches1.device.type != "cpu":  # out= has no autograd
        product = patches1.reshape(n1 * positions, -1) @ patches2.reshape(n2 * positions, -1).T
        return product.reshape(n1, positions, n2, positions).transpose(1, 2).contiguous()
    out = _compiled.cpu_empty((n1, n2, positions, positions), patches1.dtype)
    others = patches2.transpose(1, 2)
    for i in range(n1):
        torch.matmul(patches1[i], others, out=out[i])
    return out


def _padded(t: torch.Tensor, geom, padding: str) -> torch.Tensor:
    """``t`` (..., H, W, H, W) padded on its four position axes: zeros, or periodically."""
    if padding == "circular":
        return _circular(t, geom)
    (_, lo_h, hi_h), (_, lo_w, hi_w) = geom
    *batch, height, width, _, _ = t.shape
    # zeros and a strided copy: about 3x faster than nn.functional.pad on these 4-axis pads
    size = (height + lo_h + hi_h, width + lo_w + hi_w)
    padded = t.new_zeros((*batch, *size, *size))
    inside = (slice(lo_h, lo_h + height), slice(lo_w, lo_w + width))
    padded[(..., *inside, *inside)] = t
    return padded


def _circular(t: torch.Tensor, geom) -> torch.Tensor:
    """``t`` (..., H, W, H, W) padded periodically on its four position axes, as ``geom`` says."""
    for axis, (_, lo, hi) in zip(range(t.ndim - 4, t.ndim), geom + geom):
        t = pad_axis(t, axis, lo, hi, "circular")
    return t
