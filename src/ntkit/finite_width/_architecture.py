"""MLPSpec: a fully-connected network as the per-layer numbers of the finite-width theory."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._errors import NtkitError
from ..layers.activation import Activation
from ..layers.combinators import Serial
from ..layers.dense import Dense
from ..layers.elementwise import Elementwise
from ..layers.erf import GELU, Erf
from ..layers.rectified import ABReLU

#: Activations with closed-form Gaussian expectations (and autograd derivatives of them).
CLOSED_FORM = (ABReLU, Erf)
#: Smooth activations: trapezoidal quadrature, differentiated in K by autograd (``fn'`` too).
SMOOTH = (Elementwise, GELU)
SUPPORTED = (
    "serial(Dense, act, Dense, act, ..., Dense) with act one of ReLU, LeakyReLU, Abs, ABReLU, Erf "
    "(closed form), GELU, Tanh, Sigmoid, Softplus or Elementwise(fn) with a smooth fn (quadrature)"
)


@dataclass(frozen=True)
class MLPSpec:
    """A fully-connected network in the notation of Roberts, Yaida & Hanin (RYH) 2022, §1.4 / §7.

    Layer :math:`\\ell = 1..L` (``L = len(c_w)``) computes

    .. math::
        z^{(1)} = b^{(1)} + W^{(1)} x, \\qquad
        z^{(\\ell+1)} = b^{(\\ell+1)} + W^{(\\ell+1)} \\sigma_\\ell(z^{(\\ell)}),

    with :math:`b^{(\\ell)} \\sim \\mathcal N(0, C_b^{(\\ell)})`,
    :math:`W^{(\\ell)}_{ij} \\sim \\mathcal N(0, C_W^{(\\ell)} / n_{\\ell-1})` and the diagonal
    learning-rate tensor :math:`\\lambda_b^{(\\ell)}` (biases), :math:`\\lambda_W^{(\\ell)}/n_{\\ell-1}`
    (weights) of RYH §7.1 (the learning-rate tensor). The NTK is
    :math:`\\hat\\Theta = \\sum_{\\mu\\nu}\\lambda_{\\mu\\nu}\\,\\partial z\\,\\partial z`.

    Parameters
    ----------
    activations : tuple of Activation
        :math:`\\sigma_1 .. \\sigma_{L-1}`, one per hidden layer.
    c_w, c_b, lambda_w, lambda_b : tuple of float
        One entry per weight layer (length L), all finite and >= 0.

    See :func:`read_mlp` for the presets of ntkit's ``"ntk"`` and ``"standard"``
    parameterizations.
    """

    activations: tuple
    c_w: tuple
    c_b: tuple
    lambda_w: tuple
    lambda_b: tuple

    def __post_init__(self):
        depth = len(self.c_w)
        if depth < 1:
            raise NtkitError("MLPSpec: c_w needs one entry per weight layer (at least one)")
        for name in ("c_b", "lambda_w", "lambda_b"):
            if len(getattr(self, name)) != depth:
                raise NtkitError(f"MLPSpec: {name} has {len(getattr(self, name))} entries, c_w has {depth}")
            for value in getattr(self, name):
                _check_number(value, name)
        for value in self.c_w:
            _check_number(value, "c_w")
        if len(self.activations) != depth - 1:
            raise NtkitError(
                f"MLPSpec: {depth} weight layers need {depth - 1} activations, got {len(self.activations)}"
            )
        for index, act in enumerate(self.activations):
            check_activation(act, f"MLPSpec.activations[{index}]")

    @property
    def depth(self) -> int:
        """L, the number of weight layers."""
        return len(self.c_w)


def _check_number(value, name: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise NtkitError(f"MLPSpec: {name} entries must be finite numbers >= 0, got {value!r}")


def check_activation(act, where: str) -> None:
    if not isinstance(act, (CLOSED_FORM + SMOOTH)):
        raise NtkitError(
            f"{where} ({type(act).__name__}): activation not supported by ntkit.finite_width; "
            f"supported: {SUPPORTED}"
        )


def check_width(width, what: str = "width") -> int:
    if isinstance(width, bool) or not isinstance(width, int) or width < 2:
        raise NtkitError(f"{what} must be an integer >= 2 (the 1/n expansion needs n >= 2), got {width!r}")
    return width


def read_mlp(net, width: int | None = None, in_features: int | None = None) -> MLPSpec:
    """Read ``serial(Dense, act, ..., Dense)`` into an :class:`MLPSpec`.

    Presets (RYH §7.1; the finite-width note, §1.4), with :math:`\\sigma_w` = ``W_std``,
    :math:`\\sigma_b` = ``b_std`` (0 when None):

    * ``"ntk"``: :math:`C_W = \\lambda_W = \\sigma_w^2`, :math:`C_b = \\lambda_b = \\sigma_b^2`
      (a unit step in the N(0, 1) parameter is a step :math:`\\sigma_w^2/n` in W);
    * ``"standard"``: :math:`C_W = \\sigma_w^2`, :math:`C_b = \\sigma_b^2`,
      :math:`\\lambda_W^{(\\ell)} = n_{\\ell-1}` (the fan-in: ``in_features`` for layer 1,
      ``width`` after), :math:`\\lambda_b = 1` with a bias and 0 without. This is ntkit's
      ``Dense(parameterization="standard")`` NTK; it grows like the width.

    ``width`` defaults to the network's hidden width (the ``out_features`` of every Dense but
    the last, which must then all be equal). Nested ``serial`` are flattened.
    """
    if isinstance(net, MLPSpec):
        return net
    if not isinstance(net, Serial):
        raise NtkitError(f"finite_width needs {SUPPORTED}; got {type(net).__name__}")
    layers = _flatten(net, "serial")
    if not layers:
        raise NtkitError(f"finite_width needs {SUPPORTED}; got an empty serial")
    denses, acts = [], []
    for position, (path, layer) in enumerate(layers):
        expect_dense = position % 2 == 0
        if expect_dense and not isinstance(layer, Dense):
            raise NtkitError(f"{path} ({layer.name}): expected Dense here; finite_width supports {SUPPORTED}")
        if not expect_dense:
            if not isinstance(layer, Activation):
                raise NtkitError(
                    f"{path} ({layer.name}): expected an activation here; finite_width supports {SUPPORTED}"
                )
            check_activation(layer, path)
        (denses if expect_dense else acts).append((path, layer))
    if len(denses) == len(acts):
        path, layer = layers[-1]
        raise NtkitError(f"{path} ({layer.name}): the network must end with a Dense readout; supports {SUPPORTED}")
    if width is None:
        width = hidden_width(net) if len(denses) > 1 else 2  # one Dense: no hidden layer, width unused
    check_width(width)
    c_w, c_b, lambda_w, lambda_b = [], [], [], []
    for index, (path, dense) in enumerate(denses):
        w2, b2 = dense.W_std**2, (0.0 if dense.b_std is None else dense.b_std**2)
        c_w.append(w2)
        c_b.append(b2)
        if dense.parameterization == "ntk":
            lambda_w.append(w2)
            lambda_b.append(b2)
            continue
        fan_in = width
        if index == 0:
            fan_in = in_features or dense.in_features
            if not fan_in:
                raise NtkitError(f"{path} (Dense): standard parameterization needs the input width; pass inputs")
        lambda_w.append(float(fan_in))
        lambda_b.append(0.0 if dense.b_std is None else 1.0)
    first = denses[0][1]
    if in_features and first.in_features and first.in_features != in_features:
        raise NtkitError(
            f"{denses[0][0]} (Dense): expects {first.in_features} input features, inputs have {in_features}"
        )
    return MLPSpec(tuple(layer for _, layer in acts), tuple(c_w), tuple(c_b), tuple(lambda_w), tuple(lambda_b))


def hidden_width(net) -> int:
    """The hidden width n of ``serial(Dense, act, ..., Dense)``: every Dense but the last must have it."""
    if isinstance(net, MLPSpec):
        raise NtkitError("an MLPSpec has no widths; pass width= (the hidden width n)")
    if not isinstance(net, Serial):
        raise NtkitError(f"finite_width needs {SUPPORTED}; got {type(net).__name__}")
    hidden = [layer.out_features for _, layer in _flatten(net, "serial") if isinstance(layer, Dense)][:-1]
    if not hidden:
        raise NtkitError("a network with a single Dense layer has no hidden width; pass width=")
    if len(set(hidden)) > 1:
        raise NtkitError(f"hidden widths {hidden} differ; pass width= (equal hidden widths are supported)")
    return check_width(hidden[0], "hidden width")


def _flatten(net: Serial, prefix: str) -> list:
    out = []
    for index, layer in enumerate(net.layers):
        path = f"{prefix}[{index}]"
        if isinstance(layer, Serial):
            out.extend(_flatten(layer, path))
        else:
            out.append((path, layer))
    return out


def check_points(x: torch.Tensor, name: str) -> torch.Tensor:
    """Inputs as a float64 (N, features) CPU tensor of finite numbers (finite_width runs on the CPU)."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise NtkitError(f"{name} has shape {tuple(x.shape)}; finite_width needs (N, features) with N, features >= 1")
    x = x.to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise NtkitError(f"{name} contains NaN or inf")
    return x
