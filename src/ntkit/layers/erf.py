"""Error-function nonlinearities: Erf (Williams 1997) and the exact GELU."""

from __future__ import annotations

import math

import torch

from ._gaussian import GaussianPair
from .activation import Activation


class Erf(Activation):
    """:math:`\\phi(x) = a\\,\\operatorname{erf}(b x) + c`.

    Williams 1997 ("Computing with infinite networks", eq. 11), with the derivative term from
    :math:`\\mathbb{E}[e^{-b^2(u^2+v^2)}] = \\det(I + 2b^2\\Sigma)^{-1/2}`:

    .. math::
        \\mathbb{E}[\\phi(u)\\phi(v)] &= \\frac{2a^2}{\\pi}
            \\arcsin\\frac{2b^2 k}{\\sqrt{(1 + 2b^2 v_1)(1 + 2b^2 v_2)}} + c^2, \\\\
        \\mathbb{E}[\\phi'(u)\\phi'(v)] &= \\frac{4 a^2 b^2}{\\pi}
            \\big((1 + 2b^2 v_1)(1 + 2b^2 v_2) - 4 b^4 k^2\\big)^{-1/2}.
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        super().__init__()
        self.a, self.b, self.c = float(a), float(b), float(c)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.erf(self.b * x) + self.c

    def dual(self, pair: GaussianPair, derivative: bool):
        b2 = 2 * self.b**2
        spread1 = pair.var1 * b2 + 1  # 1 + 2 b^2 v1
        spread2 = pair.var2 * b2 + 1
        # det = (1 + b2 v1)(1 + b2 v2) - (b2 k)^2 without the cancellation of two numbers of size
        # (b2 v)^2 (exact where the correlation is exactly 1), and arcsin(b2 k / sqrt(s1 s2)) as
        # atan2(b2 k, sqrt(det)): accurate also where that ratio rounds to 1 (large variances)
        det = pair.decorrelated().mul_(b2 * b2).add_(spread1 + spread2 - 1)
        nngp = torch.atan2(pair.cov * b2, det.sqrt()).mul_(2 * self.a**2 / math.pi).add_(self.c**2)
        if not derivative:
            return nngp, None
        return nngp, det.rsqrt_().mul_(2 * self.a**2 * b2 / math.pi)

    def extra_repr(self) -> str:
        return f"a={self.a:g}, b={self.b:g}, c={self.c:g}"


class GELU(Activation):
    """The exact GELU :math:`\\phi(x) = x\\,\\Phi(x)` (Hendrycks & Gimpel 2016), as ``torch.nn.GELU()``.

    Derived by Stein's lemma and Gaussian tilting (cf. Tsuchida et al. 2021, "Avoiding kernel
    fixed points", Sec. 4). With :math:`D = (1+v_1)(1+v_2) - k^2` and
    :math:`\\rho = k / \\sqrt{(1+v_1)(1+v_2)}`:

    .. math::
        \\mathbb{E}[\\phi(u)\\phi(v)] &= k\\Big(\\frac14 + \\frac{\\arcsin\\rho}{2\\pi}\\Big)
            + \\frac{v_1 v_2 - k^2 + k^2/(1+v_1) + k^2/(1+v_2)}{2\\pi\\sqrt D}, \\\\
        \\mathbb{E}[\\phi'(u)\\phi'(v)] &= \\frac14 + \\frac{\\arcsin\\rho}{2\\pi}
            + \\frac{k}{2\\pi\\sqrt D}\\Big(\\frac{1}{1+v_1} + \\frac{1}{1+v_2}\\Big)
            + \\frac{k}{2\\pi D^{3/2}}.
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x)

    def dual(self, pair: GaussianPair, derivative: bool):
        k, v1, v2 = pair.cov, pair.var1, pair.var2
        spread1, spread2 = v1 + 1, v2 + 1
        k2 = k * k
        unexplained = pair.decorrelated()  # v1 v2 - k^2, without cancellation
        sqrt_d = (unexplained + (spread1 + spread2 - 1)).sqrt_()
        rsqrt_d = sqrt_d.reciprocal()
        orthant = torch.atan2(k, sqrt_d)  # arcsin(k / sqrt(s1 s2)), accurate near 1 (see Erf)
        orthant.mul_(1 / (2 * math.pi)).add_(0.25)  # E[Phi(u) Phi(v)]
        inverse_sum = spread1.reciprocal() + spread2.reciprocal()
        numerator = unexplained.addcmul_(k2, inverse_sum)
        nngp = (numerator * rsqrt_d).mul_(1 / (2 * math.pi)).addcmul_(k, orthant)
        if not derivative:
            return nngp, None
        cross = (k * rsqrt_d).mul_(1 / (2 * math.pi))
        kdot = orthant.addcmul_(cross, inverse_sum).addcmul_(cross, rsqrt_d.square_())
        return nngp, kdot

