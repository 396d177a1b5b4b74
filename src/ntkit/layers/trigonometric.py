"""Sinusoidal nonlinearities: Sin, Cos and the random-Fourier-feature Rbf."""

from __future__ import annotations

import math

import torch

from ._gaussian import GaussianPair
from .activation import Activation


def _sinusoid_dual(pair: GaussianPair, a: float, b: float, phase: float, derivative: bool):
    """Duals of :math:`a \\sin(bx + \\text{phase})` from :math:`\\mathbb{E}[\\cos(w)] = e^{-\\mathrm{Var}(w)/2}`.

    With :math:`e_\\mp = \\exp(-b^2 (v_1 + v_2 \\mp 2k)/2)`, product-to-sum identities give
    :math:`\\mathbb{E}[\\phi\\phi] = \\frac{a^2}{2}(e_- - \\cos(2\\,\\text{phase})\\, e_+)` and
    :math:`\\mathbb{E}[\\phi'\\phi'] = \\frac{a^2 b^2}{2}(e_- + \\cos(2\\,\\text{phase})\\, e_+)`.
    """
    half_b2 = b * b / 2
    total = pair.var1 + pair.var2
    e_minus = torch.add(total, pair.cov, alpha=-2.0).mul_(-half_b2).exp_()
    e_plus = torch.add(total, pair.cov, alpha=2.0).mul_(-half_b2).exp_()
    cos2 = math.cos(2 * phase)
    nngp = torch.add(e_minus, e_plus, alpha=-cos2).mul_(a * a / 2)
    if not derivative:
        return nngp, None
    return nngp, e_minus.add_(e_plus, alpha=cos2).mul_(a * a * b * b / 2)


class Sin(Activation):
    """:math:`\\phi(x) = a \\sin(b x + c)` (Pearce et al. 2019, "Expressive priors in BNNs", Table 1).

    .. math::
        \\mathbb{E}[\\phi(u)\\phi(v)] = \\frac{a^2}{2}\\Big(e^{-b^2(v_1 + v_2 - 2k)/2}
            - \\cos(2c)\\, e^{-b^2(v_1 + v_2 + 2k)/2}\\Big),

    and the same with :math:`a^2 b^2` and :math:`+\\cos(2c)` for :math:`\\mathbb{E}[\\phi'\\phi']`.
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        super().__init__()
        self.a, self.b, self.c = float(a), float(b), float(c)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.sin(self.b * x + self.c)

    def dual(self, pair: GaussianPair, derivative: bool):
        return _sinusoid_dual(pair, self.a, self.b, self.c, derivative)

    def extra_repr(self) -> str:
        return f"a={self.a:g}, b={self.b:g}, c={self.c:g}"


class Cos(Sin):
    """:math:`\\phi(x) = a \\cos(b x + c) = a \\sin(b x + c + \\pi/2)`; see :class:`Sin`."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.cos(self.b * x + self.c)

    def dual(self, pair: GaussianPair, derivative: bool):
        return _sinusoid_dual(pair, self.a, self.b, self.c + math.pi / 2, derivative)


class Rbf(Activation):
    """:math:`\\phi(x) = \\sqrt 2 \\sin(\\sqrt{2\\gamma}\\, x + \\pi/4)`, whose NNGP is the RBF kernel.

    Random Fourier features (Rahimi & Recht 2007); from :class:`Sin` with
    :math:`\\cos(\\pi/2) = 0` (neural-tangents ``Rbf``):

    .. math::
        \\mathbb{E}[\\phi(u)\\phi(v)] = e^{-\\gamma (v_1 + v_2 - 2k)}, \\qquad
        \\mathbb{E}[\\phi'(u)\\phi'(v)] = 2\\gamma\\, e^{-\\gamma (v_1 + v_2 - 2k)}.

    After ``Dense(W_std=1, b_std=0)`` on inputs x, this is :math:`\\exp(-\\gamma \\lVert x - x'\\rVert^2 / d)`.
    """

    def __init__(self, gamma: float = 1.0):
        super().__init__()
        self.gamma = float(gamma)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2) * torch.sin(math.sqrt(2 * self.gamma) * x + math.pi / 4)

    def dual(self, pair: GaussianPair, derivative: bool):
        nngp = torch.add(pair.var1 + pair.var2, pair.cov, alpha=-2.0).mul_(-self.gamma).exp_()
        return nngp, (nngp * (2 * self.gamma) if derivative else None)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}"
