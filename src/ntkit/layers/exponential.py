"""Exponential nonlinearities: Exp and the Gaussian bump."""

from __future__ import annotations

import torch

from .._errors import NtkitError
from ._gaussian import GaussianPair
from .activation import Activation


class Exp(Activation):
    """:math:`\\phi(x) = a\\, e^{b x}`, from the log-normal moment :math:`\\mathbb{E}[e^{w}] = e^{\\mathrm{Var}(w)/2}`:

    .. math::
        \\mathbb{E}[\\phi(u)\\phi(v)] = a^2 e^{b^2 (v_1 + v_2 + 2k)/2}, \\qquad
        \\mathbb{E}[\\phi'(u)\\phi'(v)] = a^2 b^2 e^{b^2 (v_1 + v_2 + 2k)/2}.
    """

    def __init__(self, a: float = 1.0, b: float = 1.0):
        super().__init__()
        self.a, self.b = float(a), float(b)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x)

    def dual(self, pair: GaussianPair, derivative: bool):
        moment = torch.add(pair.var1 + pair.var2, pair.cov, alpha=2.0).mul_(self.b**2 / 2).exp_()
        nngp = moment * self.a**2
        return nngp, (moment.mul_((self.a * self.b) ** 2) if derivative else None)

    def extra_repr(self) -> str:
        return f"a={self.a:g}, b={self.b:g}"


class Gaussian(Activation):
    """:math:`\\phi(x) = a\\, e^{b x^2}` (b < 0 for a bump; neural-tangents ``Gaussian``).

    With :math:`D = (1 - 2b v_1)(1 - 2b v_2) - 4 b^2 k^2 = \\det(I - 2b\\Sigma)` and Gaussian
    tilting, :math:`\\mathbb{E}[e^{b(u^2+v^2)}] = D^{-1/2}` and
    :math:`\\mathbb{E}[uv\\, e^{b(u^2+v^2)}] = k D^{-3/2}`, so

    .. math::
        \\mathbb{E}[\\phi(u)\\phi(v)] = a^2 D^{-1/2}, \\qquad
        \\mathbb{E}[\\phi'(u)\\phi'(v)] = 4 a^2 b^2 k\\, D^{-3/2}.

    For b > 0 the moments are finite only while :math:`4 b v < 1`; larger variances raise.
    """

    def __init__(self, a: float = 1.0, b: float = -1.0):
        super().__init__()
        self.a, self.b = float(a), float(b)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x * x)

    def dual(self, pair: GaussianPair, derivative: bool):
        if self.b > 0:
            for var in (pair.var1, pair.var2):
                if bool((var * (4 * self.b) >= 1).any()):
                    raise NtkitError(
                        f"E[phi(u)^2] is infinite: input variance {float(var.max()):.4g} >= "
                        f"1/(4b) = {1 / (4 * self.b):.4g}; use b < 0 or smaller W_std"
                    )
        two_b = 2 * self.b
        # 1 - 2b(v1 + v2) + 4b^2 (v1 v2 - k^2), the last term without cancellation
        det = pair.decorrelated().mul_(two_b**2).add_(1 - two_b * (pair.var1 + pair.var2))
        rsqrt_det = det.rsqrt_()
        nngp = rsqrt_det * self.a**2
        if not derivative:
            return nngp, None
        return nngp, (pair.cov * rsqrt_det.pow(3)).mul_(4 * self.a**2 * self.b**2)

    def extra_repr(self) -> str:
        return f"a={self.a:g}, b={self.b:g}"
