"""``taylor_expand``: a model expanded to any order in its parameters, as a module."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import jvp
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .._errors import NtkitError
from ._linearize import Linearized


class _Composite(TorchFunctionMode):
    """Normalizations and activations from primitive operations inside higher-order expansions.

    PyTorch's fused ``layer_norm``, ``instance_norm`` and training-mode ``batch_norm`` have
    forward-mode derivatives that are right to first order but not differentiable again (their
    second directional derivatives are wrong), and ``silu`` and ``mish`` have none for their
    derivatives; so nested ``jvp`` needs them written out: the mean and the biased variance over
    the normalized axes, as the fused kernels compute them, :math:`x\\,\\sigma(x)` and
    :math:`x \\tanh(\\mathrm{softplus}(x))`. A training-mode batch norm here does not update its
    running statistics.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm:
            return _layer_norm(*args, **kwargs)
        if func is F.batch_norm and _batch_statistics(*args, **kwargs):
            return _batch_norm(*args, **kwargs)
        if func is F.instance_norm:
            return _instance_norm(*args, **kwargs)
        if func is F.silu:
            return args[0] * torch.sigmoid(args[0])
        if func is F.mish:
            return args[0] * torch.tanh(F.softplus(args[0]))
        return func(*args, **kwargs)


def _normalize(x, dims, weight, bias, eps, shape):
    mean = x.mean(dims, keepdim=True)
    out = (x - mean) * torch.rsqrt((x - mean).square().mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    return out if bias is None else out + bias.reshape(shape)


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    n = len(normalized_shape)
    return _normalize(input, tuple(range(-n, 0)), weight, bias, eps, tuple(normalized_shape))


def _batch_statistics(input, running_mean=None, running_var=None, weight=None, bias=None,
                      training=False, momentum=0.1, eps=1e-5):
    return training or running_mean is None


def _batch_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                training=False, momentum=0.1, eps=1e-5):
    dims = (0,) + tuple(range(2, input.ndim))
    return _normalize(input, dims, weight, bias, eps, (-1,) + (1,) * (input.ndim - 2))


def _instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                   use_input_stats=True, momentum=0.1, eps=1e-5):
    """Each example's channels normalized over their positions (or by running statistics)."""
    shape = (-1,) + (1,) * (input.ndim - 2)
    if use_input_stats:
        return _normalize(input, tuple(range(2, input.ndim)), weight, bias, eps, shape)
    out = (input - running_mean.reshape(shape)) * torch.rsqrt(running_var.reshape(shape) + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    return out if bias is None else out + bias.reshape(shape)


def _derivatives(fn, t: torch.Tensor, order: int) -> tuple[torch.Tensor, ...]:
    """``(fn(t), fn'(t), ..., fn^(order)(t))`` for a function of a scalar, by nested ``jvp``.

    Each level differentiates the tuple of the previous level once more: its tangent is the
    tuple shifted by one derivative, of which only the last entry is new. Cost
    :math:`2^{order}` evaluations of ``fn``.
    """
    if order == 0:
        return (fn(t),)
    primal, tangent = jvp(lambda s: _derivatives(fn, s, order - 1), (t,), (torch.ones_like(t),))
    return primal + (tangent[-1],)


class TaylorExpanded(Linearized):
    """A model expanded to ``order`` in its parameters around :math:`\\theta_0`:

    .. math:: f_k(x; \\theta) = \\sum_{m=0}^{k} \\frac{1}{m!}\\,
              \\frac{d^m}{ds^m} f\\big(x; \\theta_0 + s(\\theta - \\theta_0)\\big)\\Big|_{s=0},

    the m-th directional derivatives computed by ``m`` nested forward-mode JVPs (cost about
    :math:`2^k` forward passes). Order 1 is :class:`Linearized`; order 2 adds the curvature
    :math:`\\frac12 \\delta^\\top H \\delta` that drives feature learning at finite width
    (Dyer and Gur-Ari 2020; Huang and Yau 2020). Attributes as :class:`Linearized`, plus
    ``order``.
    """

    def __init__(self, model: nn.Module, order: int, params=None):
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise NtkitError(f"order must be an integer >= 0, got {order!r}")
        super().__init__(model, params)
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta0, delta = self.theta0(), self.delta()
        first = next(iter(theta0.values()))

        def along(s):
            return self._call({name: theta0[name] + s * delta[name] for name in self.names}, x)

        start = torch.zeros((), dtype=first.dtype, device=first.device)
        if self.order < 2:
            terms = _derivatives(along, start, self.order)
        else:
            with _Composite():
                terms = _derivatives(along, start, self.order)
        return sum(term / math.factorial(m) for m, term in enumerate(terms))

    def extra_repr(self) -> str:
        return f"order={self.order}"


def taylor_expand(model: nn.Module, order: int, params=None) -> TaylorExpanded:
    """The model's Taylor expansion to ``order`` in its parameters, as a trainable module.

    Parameters
    ----------
    model : torch.nn.Module
        Any materialized module (copied).
    order : int
        0 gives the constant :math:`f(x; \\theta_0)`, 1 the linearization, 2 adds the Hessian
        term, and so on; cost about :math:`2^{order}` forward passes per call.
    params : optional
        The parameters to expand in (see :func:`ntkit.linearize`).

    Returns
    -------
    TaylorExpanded

    References
    ----------
    Lee et al. 2019, eq. 5 (first order); Dyer and Gur-Ari 2020, "Asymptotics of wide networks
    from Feynman diagrams" (higher orders).
    """
    return TaylorExpanded(model, order, params)
