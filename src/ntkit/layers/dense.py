"""Dense: the fully-connected layer, in the NTK and the standard parameterization."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .. import _compiled
from .._errors import NtkitError
from ..kernel import Kernel
from ._base import Kernels, Layer, single
from ._spatial import output_variances

PARAMETERIZATIONS = ("ntk", "standard")


def check_parameterization(parameterization: str, layer: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise NtkitError(f"{layer}: parameterization must be 'ntk' or 'standard', got {parameterization!r}")
    return parameterization


def check_std(value, argument: str, layer: str, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise NtkitError(f"{layer}: {argument} must be a finite number >= 0, got {value!r}")
    return float(value)


def draw_parameters(layer) -> None:
    """Draw ``layer.weight`` and ``layer.bias`` (Dense, Conv, ConvLocal) from the initialization of
    its parameterization: N(0, 1) for "ntk", N(0, W_std^2 / fan_in) and N(0, b_std^2) for
    "standard". Lazy parameters not yet materialized are left alone."""
    if layer.has_uninitialized_params():
        return
    ntk = layer.parameterization == "ntk"
    with torch.no_grad():
        layer.weight.normal_(0.0, 1.0 if ntk else layer.W_std / math.sqrt(layer.fan_in))
        if layer.bias is not None:
            layer.bias.normal_(0.0, 1.0 if ntk else layer.b_std)


def scaled_parameters(layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` as the forward pass uses them: for "ntk" the N(0, 1) parameters times
    ``W_std / sqrt(fan_in)`` and ``b_std`` (Jacot et al. 2018, eq. 1); for "standard" as stored."""
    if layer.parameterization != "ntk":
        return layer.weight, layer.bias
    bias = None if layer.bias is None else layer.bias * layer.b_std
    return layer.weight * (layer.W_std / math.sqrt(layer.fan_in)), bias


def affine_kernels(
    nngp: torch.Tensor, ntk: torch.Tensor | None, W_std: float, b_std: float | None, parameterization: str,
    fan_in: int, window: int = 1, fresh: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The NNGP and NTK of :math:`W x + b` from those of its (window-averaged) input: the map of
    :class:`Dense`, shared by the convolutions (``fan_in`` = input channels x filter size).

    ``window``: the inputs are sums over a filter window of that many taps, averaged here (times
    ``1 / window``).
    ``fresh``: they are contiguous temporaries the caller gives up, so they are overwritten (on
    the CPU in one compiled pass, ``ntkit._compiled.affine``, with the same operations).

    Separate multiplies and adds, never fused ones (``torch.add`` with ``alpha`` may use an FMA in
    some vector lanes and not in others): a pair at correlation 1 then gets exactly the numbers of
    a variance, wherever it sits in the matrix.
    """
    tensors = (nngp,) if ntk is None else (nngp, ntk)
    if fresh and all(t.is_contiguous() for t in tensors) and _compiled.enabled(*tensors):
        b2 = None if b_std is None else b_std**2
        _compiled.affine_(nngp, ntk, window, W_std**2, b2, parameterization == "ntk", fan_in)
        return nngp, ntk
    if window != 1:  # times the reciprocal, as the compiled form does
        nngp = nngp.mul_(1.0 / window) if fresh else nngp * (1.0 / window)
        if ntk is not None:
            ntk = ntk.mul_(1.0 / window) if fresh else ntk * (1.0 / window)
    w2 = W_std**2
    out = nngp * w2 if b_std is None else (nngp * w2).add_(b_std**2)
    if ntk is None:
        return out, None
    if parameterization == "ntk":
        return out, (ntk * w2).add_(out)
    ntk = (ntk * w2).add_(nngp * fan_in)
    if b_std is not None:
        ntk += 1.0
    return out, ntk


class Dense(LazyModuleMixin, Layer):
    """Fully-connected layer :math:`z = W x + b` over the feature (channel) axis.

    With ``parameterization="ntk"`` (default) the parameters are standard normal and the
    scales live in the forward pass (Jacot et al. 2018, eq. 1; Lee et al. 2019, eq. 1):

    .. math:: z_i = \\frac{\\sigma_w}{\\sqrt{n}} \\sum_j W_{ij} x_j + \\sigma_b b_i,
              \\qquad W_{ij}, b_i \\sim \\mathcal N(0, 1).

    With ``parameterization="standard"`` the scales live in the initialization,
    :math:`W_{ij} \\sim \\mathcal N(0, \\sigma_w^2 / n)`, :math:`b_i \\sim \\mathcal N(0, \\sigma_b^2)`,
    and the forward pass is :math:`z = W x + b`.

    Kernel map (Lee et al. 2018, eq. 5; Jacot et al. 2018, Theorem 1; for "standard",
    Sohl-Dickstein et al. 2020, eq. 5), with :math:`K, \\Theta` those of the input:

    .. math::
        K' = \\sigma_w^2 K + \\sigma_b^2, \\qquad
        \\Theta' = \\begin{cases}
            K' + \\sigma_w^2 \\Theta & \\text{ntk} \\\\
            n K + 1 + \\sigma_w^2 \\Theta & \\text{standard}
        \\end{cases}

    where :math:`n` is the input width (the ``+1`` only with a bias). In the standard
    parameterization the NTK therefore depends on the widths given to the finite network.

    Parameters
    ----------
    out_features : int
        Width of the layer in the finite network. The kernel does not depend on it (except
        through the next layer's standard-parameterization NTK).
    W_std : float
        :math:`\\sigma_w`; the weight variance is ``W_std**2 / fan_in``.
    b_std : float or None
        :math:`\\sigma_b`; None (default, as neural-tangents) means no bias.
    parameterization : "ntk" or "standard"
    in_features : int, optional
        Input width; by default inferred at the first forward pass (as ``torch.nn.LazyLinear``:
        run the network once before handing its parameters to an optimizer).

    Shapes
    ------
    Input ``(N, in_features)``, or ``(N, in_features, *spatial)`` where it acts on the channel
    axis as a 1x1 convolution. Output the same with ``out_features``.
    """

    diagonal_layout = True

    cls_to_become = None

    def __init__(
        self,
        out_features: int,
        W_std: float = 1.0,
        b_std: float | None = None,
        parameterization: str = "ntk",
        in_features: int | None = None,
    ):
        super().__init__()
        if not isinstance(out_features, int) or out_features < 1:
            raise NtkitError(f"Dense: out_features must be a positive integer, got {out_features!r}")
        self.out_features = out_features
        self.W_std = check_std(W_std, "W_std", "Dense", allow_none=False)
        self.b_std = check_std(b_std, "b_std", "Dense", allow_none=True)
        self.parameterization = check_parameterization(parameterization, "Dense")
        self.in_features = 0
        if in_features is None:
            self.weight = UninitializedParameter()
        else:
            self.in_features = int(in_features)
            self.weight = nn.Parameter(torch.empty(out_features, self.in_features))
        self.bias = None if self.b_std is None else nn.Parameter(torch.empty(out_features))
        if in_features is not None:
            self.reset_parameters()

    # -- finite face -------------------------------------------------------------------------

    def initialize_parameters(self, x: torch.Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            if x.ndim < 2:
                raise NtkitError(f"input has shape {tuple(x.shape)}; expected (N, features, ...)")
            self.in_features = int(x.shape[1])
            with torch.no_grad():
                self.weight.materialize((self.out_features, self.in_features), dtype=x.dtype, device=x.device)
                if self.bias is not None:
                    self.bias.data = self.bias.data.to(dtype=x.dtype, device=x.device)
            self.reset_parameters()

    @property
    def fan_in(self) -> int:
        return self.in_features

    def reset_parameters(self) -> None:
        """Draw the parameters from the initialization of the chosen parameterization."""
        draw_parameters(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.in_features:
            raise NtkitError(
                f"input has shape {tuple(x.shape)}; expected (N, {self.in_features}, ...)"
            )
        weight, bias = scaled_parameters(self)
        return nn.functional.linear(x.movedim(1, -1), weight, bias).movedim(-1, 1)

    # -- kernel face -------------------------------------------------------------------------

    def kernel_map(self, k: Kernels) -> Kernel:
        k = single(k, "Dense")
        if self.in_features and k.feature_shape[0] != self.in_features:  # 0: not yet materialized
            raise NtkitError(
                f"its inputs have {k.feature_shape[0]} features (feature shape {tuple(k.feature_shape)}), "
                f"but the layer has in_features={self.in_features}"
            )
        nngp, ntk = affine_kernels(k.nngp, k.ntk, self.W_std, self.b_std, self.parameterization, k.feature_shape[0])
        var1, var2 = output_variances(k, nngp, self._affine)
        return k.replace(
            nngp=nngp,
            ntk=ntk,
            var1=var1,
            var2=var2,
            feature_shape=(self.out_features,) + tuple(k.feature_shape[1:]),
            is_gaussian=True,
            centred=True,
            sources=frozenset({id(self)}),
        )

    def _affine(self, var: torch.Tensor) -> torch.Tensor:
        """The output variances: the NNGP part of :func:`affine_kernels`, with the same operations."""
        return affine_kernels(var, None, self.W_std, self.b_std, self.parameterization, 0)[0]

    def extra_repr(self) -> str:
        bias = "None" if self.b_std is None else f"{self.b_std:g}"
        return (
            f"out_features={self.out_features}, W_std={self.W_std:g}, b_std={bias}, "
            f"parameterization={self.parameterization!r}"
        )
