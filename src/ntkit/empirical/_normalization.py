"""Structured rules for the elementwise affine map of normalization layers.

``BatchNorm`` (in eval mode, with running statistics), ``LayerNorm`` and ``GroupNorm`` end with
:math:`y = \\gamma \\circ \\hat x + \\beta`, where :math:`\\hat x` is the normalized input and
does not depend on :math:`\\gamma, \\beta`. Each of the D entries of :math:`\\gamma` is a weight
with one input and one output, applied at every position ``l`` that shares it:

.. math:: \\frac{\\partial f^o}{\\partial \\gamma_d} = \\sum_l g^o_{ld}\\, \\hat x_{ld}, \\qquad
          \\frac{\\partial f^o}{\\partial \\beta_d} = \\sum_l g^o_{ld},

that is, a grouped layer (``groups = D``, ``F_in = F_out = 1``) whose patches are
:math:`\\hat x`, recomputed here from the layer's recorded input. Handled this way, a ResNet's
BatchNorm parameters no longer need per-example autodiff, and the whole network takes the
batched structured path.

Recorded tensors have the example axis first and then the shape of the module's call on one
example: ``(n, b, C, *S)`` for BatchNorm and GroupNorm (``b`` the call's own batch axis),
``(n, ..., *normalized_shape)`` for LayerNorm; cotangents have the O output units second.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _ChannelAffine:
    """Parameters per channel (axis 2 of a recorded input, axis 3 of a cotangent)."""

    @staticmethod
    def normalized(module, a):
        raise NotImplementedError

    @classmethod
    def patches(cls, module, a):
        x = cls.normalized(module, a)
        return x.movedim(2, -1).reshape(x.shape[0], -1, x.shape[2], 1)

    @staticmethod
    def cotangents(module, g):
        return g.movedim(3, -1).reshape(g.shape[0], g.shape[1], -1, g.shape[3], 1)

    @staticmethod
    def scales(module):
        return 1.0, 1.0

    @staticmethod
    def widths(module):
        return module.weight.shape[0] if module.weight is not None else module.bias.shape[0], 1, 1


class BatchNormRule(_ChannelAffine):
    """``BatchNorm1d/2d/3d`` in eval mode: normalized by its running statistics."""

    @staticmethod
    def normalized(module, a):
        shape = (a.shape[2],) + (1,) * (a.ndim - 3)
        mean, var = module.running_mean.reshape(shape), module.running_var.reshape(shape)
        return (a - mean) * torch.rsqrt(var + module.eps)


class GroupNormRule(_ChannelAffine):
    """``GroupNorm``: each example normalized over its groups of channels and positions."""

    @staticmethod
    def normalized(module, a):
        x = a.reshape(-1, *a.shape[2:])
        x = nn.functional.group_norm(x, module.num_groups, eps=module.eps)
        return x.reshape(a.shape)


class LayerNormRule:
    """``LayerNorm``: parameters over the normalized (trailing) axes, shared by the others."""

    @staticmethod
    def patches(module, a):
        x = nn.functional.layer_norm(a, module.normalized_shape, eps=module.eps)
        return x.reshape(a.shape[0], -1, math.prod(module.normalized_shape), 1)

    @staticmethod
    def cotangents(module, g):
        return g.reshape(g.shape[0], g.shape[1], -1, math.prod(module.normalized_shape), 1)

    @staticmethod
    def scales(module):
        return 1.0, 1.0

    @staticmethod
    def widths(module):
        return math.prod(module.normalized_shape), 1, 1


def normalization_rule(module: nn.Module):
    """The rule for a normalization layer of exactly these types, or None.

    BatchNorm qualifies only in eval mode with running statistics: in training mode (or
    without running statistics) it normalizes over the batch, and the structured
    implementation does not apply to the model at all.
    """
    kind = type(module)
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return BatchNormRule if not module.training and module.running_mean is not None else None
    return {nn.LayerNorm: LayerNormRule, nn.GroupNorm: GroupNormRule}.get(kind)
