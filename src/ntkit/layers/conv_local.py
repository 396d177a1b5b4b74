"""ConvLocal: the locally connected layer, a convolution with a separate filter per output position."""

from __future__ import annotations

import math

import torch
from torch.nn.parameter import UninitializedParameter

from .._errors import NtkitError
from ..kernel import Kernel
from ._base import Kernels, single
from ._spatial import nhwc_hint, pad_axis, set_self, window_sum
from .conv import Conv
from .dense import affine_kernels, scaled_parameters


def _position_diagonal(t: torch.Tensor, batch: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """The entries p = p' of a ``(*B, *S, *S)`` covariance: ``(*B, *S)``."""
    positions = math.prod(spatial)
    lead = t.shape[:batch]
    return t.reshape(*lead, positions, positions).diagonal(dim1=-2, dim2=-1).reshape(*lead, *spatial)


def _on_position_diagonal(d: torch.Tensor, batch: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """The ``(*B, *S, *S)`` covariance that is ``d`` (``(*B, *S)``) at p = p' and zero elsewhere."""
    positions = math.prod(spatial)
    lead = d.shape[:batch]
    full = d.new_zeros(*lead, positions, positions)
    full.diagonal(dim1=-2, dim2=-1).copy_(d.reshape(*lead, positions))
    return full.reshape(*lead, *spatial, *spatial)


class ConvLocal(Conv):
    """Locally connected layer :math:`z_i(p) = \\sum_{j, t} W_{ijt}(p)\\, x_j(s p + t) + b_i(p)`.

    A :class:`~ntkit.Conv` whose weights are not shared across positions: every output
    position p has its own filter :math:`W(p)` and its own bias :math:`b(p)` (as
    neural-tangents' ``stax.ConvLocal``). Arguments, padding and stride geometry, fan-in
    :math:`n = C_{in} \\prod_d k_d` and the two parameterizations are those of
    :class:`~ntkit.Conv`.

    Kernel map (Novak et al. 2019, "Bayesian deep convolutional networks with many channels
    are Gaussian processes", ICLR 2019: the locally connected networks (LCN), the
    convolution's recursion with filters drawn per position; neural-tangents
    ``stax.ConvLocal``): the filters and biases at two different output positions are
    independent, so their outputs are uncorrelated, and at one position the layer is a
    convolution. With :math:`\\mathcal A` the window average of :class:`~ntkit.Conv` and
    :math:`\\delta_{pp'}` the identity on positions,

    .. math::
        K'(p, p') = \\delta_{pp'} \\big(\\sigma_w^2 [\\mathcal A K](p, p) + \\sigma_b^2\\big),
        \\qquad
        \\Theta'(p, p') = \\delta_{pp'} \\begin{cases}
            K'(p, p) + \\sigma_w^2 [\\mathcal A \\Theta](p, p) & \\text{ntk} \\\\
            n\\, [\\mathcal A K](p, p) + 1 + \\sigma_w^2 [\\mathcal A \\Theta](p, p) & \\text{standard}
        \\end{cases}

    (the ``+1`` only with a bias), where :math:`[\\mathcal A K](p, p) = \\frac{1}{|k|}
    \\sum_t K(s p + t, s p + t)` reads only the per-position variances of the input. So a
    network ending in :class:`~ntkit.Flatten` has the same NNGP and NTK with ``ConvLocal``
    as with ``Conv`` (Novak et al. 2019: without pooling, the CNN-GP equals the LCN-GP); with
    pooling they differ. The output keeps the full ``(N1, N2, *S', *S')`` layout, zero off
    the diagonal p = p'. Cost per pair of examples: :math:`O(|k|\\, |S| + |S'|^2)`.

    The parameters depend on the number of output positions, so they are created at the
    first forward pass (``in_channels``, if given, is checked against the input); the layer
    then accepts only inputs of that spatial shape.

    Parameters
    ----------
    out_channels, filter_shape, strides, padding, W_std, b_std, parameterization, in_channels
        As in :class:`~ntkit.Conv`.

    Shapes
    ------
    Input ``(N, in_channels, *S)``, output ``(N, out_channels, *S')``. Parameters:
    ``weight`` of shape ``(out_channels, in_channels * prod(filter_shape), prod(S'))``
    (a filter per output position, ordered as in ``torch.nn.functional.unfold``) and
    ``bias`` of shape ``(out_channels, *S')``.
    """

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
        super().__init__(out_channels, filter_shape, strides, padding, W_std, b_std, parameterization)
        if in_channels is not None:
            if not isinstance(in_channels, int) or in_channels < 1:
                raise NtkitError(f"ConvLocal: in_channels must be a positive integer, got {in_channels!r}")
            self.in_channels = in_channels
        # one filter and one bias per output position: their shapes wait for the input's
        self.bias = None if self.b_std is None else UninitializedParameter()

    def _check_positions(self, feature_shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
        """The geometry, checked against the output positions the parameters were made for."""
        geom = self._check_features(feature_shape)
        if not self.has_uninitialized_params():
            out = tuple(g[0] for g in geom)
            if math.prod(out) != self.weight.shape[2] or (self.bias is not None and tuple(self.bias.shape[1:]) != out):
                raise NtkitError(
                    f"an input of spatial shape {tuple(feature_shape[1:])} gives output positions {out}, but "
                    f"its per-position weights were made for {self.weight.shape[2]} positions (ConvLocal "
                    "shares no weights across positions: build a new layer for another image size)"
                )
        return geom

    # -- finite face -------------------------------------------------------------------------

    def initialize_parameters(self, x: torch.Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            geom = self._check_features(tuple(x.shape[1:]))
            if self.in_channels and x.shape[1] != self.in_channels:
                raise NtkitError(
                    f"input has shape {tuple(x.shape)}; expected {self.in_channels} channels on axis 1"
                    f"{nhwc_hint(tuple(x.shape[1:]))}"
                )
            self.in_channels = int(x.shape[1])
            out = tuple(g[0] for g in geom)
            with torch.no_grad():
                shape = (self.out_channels, self.fan_in, math.prod(out))
                self.weight.materialize(shape, dtype=x.dtype, device=x.device)
                if self.bias is not None:
                    self.bias.materialize((self.out_channels, *out), dtype=x.dtype, device=x.device)
            self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        geom = self._check_positions(tuple(x.shape[1:]))
        if x.shape[1] != self.in_channels:
            raise NtkitError(
                f"input has shape {tuple(x.shape)}; expected {self.in_channels} channels on axis 1"
                f"{nhwc_hint(tuple(x.shape[1:]))}"
            )
        for d, (_, lo, hi) in enumerate(geom):
            x = pad_axis(x, 2 + d, lo, hi, self.padding)
        n = len(self.filter_shape)
        out = tuple(g[0] for g in geom)
        for d in range(n):  # (N, C, S'_1, k_1, ..., S'_n, k_n): the window of each output position
            k, s, axis = self.filter_shape[d], self.strides[d], 2 + 2 * d
            index = (torch.arange(out[d], device=x.device)[:, None] * s + torch.arange(k, device=x.device)).flatten()
            x = x.index_select(axis, index).unflatten(axis, (out[d], k))  # (index_select batches under jacrev)
        weight, bias = scaled_parameters(self)
        # weight (out, C k_1 .. k_n, positions), ordered as torch.nn.functional.unfold's patches
        weight = weight.reshape(self.out_channels, self.in_channels, *self.filter_shape, *out)
        positions, taps = "pq"[:n], "ij"[:n]
        windows = "".join(p + t for p, t in zip(positions, taps))
        z = torch.einsum(f"nc{windows},oc{taps}{positions}->no{positions}", x, weight)
        return z if bias is None else z + bias

    # -- kernel face -------------------------------------------------------------------------

    def kernel_map(self, k: Kernels) -> Kernel:
        k = single(k, "ConvLocal")
        geom = self._check_kernel_input(k.feature_shape)
        self._check_positions(k.feature_shape)
        n = len(self.filter_shape)
        spatial = tuple(k.feature_shape[1:])
        out = tuple(g[0] for g in geom)
        window = math.prod(self.filter_shape)

        def average(t: torch.Tensor, batch: int) -> torch.Tensor:
            """:math:`[\\mathcal A t](p, p)` at each output position: ``(*B, *S, *S) -> (*B, *S')``
            (``(*B, *S) -> (*B, *S')`` in the diagonal layout)."""
            if not k.diagonal:
                t = _position_diagonal(t, batch, spatial)
            for d in range(n):
                t = window_sum(t, batch + d, self.filter_shape[d], self.strides[d], geom[d], self.padding, compiled=True)
            return t.mul_(1.0 / window)  # as affine_kernels averages

        nngp, ntk = affine_kernels(
            average(k.nngp, 2), None if k.ntk is None else average(k.ntk, 2), self.W_std, self.b_std,
            self.parameterization, k.feature_shape[0] * window,
        )
        if k.diagonal:
            var1, var2 = k.map_variances(lambda v: self._affine(average(v, 1)))
        else:  # different output positions see independent weights: zero covariance
            if ntk is not None:
                ntk = _on_position_diagonal(ntk, 2, out)
            nngp = _on_position_diagonal(nngp, 2, out)
            var1, var2 = k.map_variances(lambda v: _on_position_diagonal(self._affine(average(v, 1)), 1, out))
        if k.same_inputs:
            set_self(nngp, var1)
        return k.replace(
            nngp=nngp,
            ntk=ntk,
            var1=var1,
            var2=var2,
            feature_shape=(self.out_channels,) + out,
            is_gaussian=True,
            centred=True,
            sources=frozenset({id(self)}),
        )
