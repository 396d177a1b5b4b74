"""Piecewise-linear and rectified nonlinearities: the arc-cosine kernel family."""

from __future__ import annotations

import math

import torch

from .. import _compiled
from .._errors import NtkitError
from ._gaussian import GaussianPair
from .activation import Activation

_PHI0 = 1.0 / math.sqrt(2.0 * math.pi)  # the standard normal density at 0


class ABReLU(Activation):
    """:math:`\\phi(x) = a \\min(x, 0) + b \\max(x, 0)`.

    With :math:`\\theta = \\arccos c` the angle between the two pre-activations (arc-cosine
    kernel of degree 1, Cho & Saul 2009, eq. 6; neural-tangents ``ABRelu``):

    .. math::
        \\mathbb{E}[\\phi(u)\\phi(v)] &= \\frac{(a-b)^2}{2\\pi} \\sqrt{v_1 v_2}\\,\\sin\\theta
            + \\dot K\\, k, \\\\
        \\dot K = \\mathbb{E}[\\phi'(u)\\phi'(v)] &= \\frac{a^2 + b^2}{2} - \\frac{(a-b)^2}{2\\pi}\\,\\theta.

    ``ReLU`` is (0, 1), ``LeakyReLU(alpha)`` is (alpha, 1), ``Abs`` is (-1, 1).
    """

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = float(a), float(b)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def duals(self, pair: GaussianPair, ntk: torch.Tensor | None):
        """Both duals in one compiled pass over the block where it applies (CPU, no autograd:
        ``ntkit._compiled.relu``), else from ``dual`` (always from a subclass's own ``dual``)."""
        tensors = (pair.cov,) if ntk is None else (pair.cov, ntk)
        own_dual = type(self).dual is ABReLU.dual
        if not own_dual or self.a == self.b or pair.rows is None or not _compiled.enabled(*tensors):
            return super().duals(pair, ntk)
        return _compiled.relu_duals(pair.rows, ntk, self.a, self.b, pair.cov.shape)

    def dual(self, pair: GaussianPair, derivative: bool):
        mean_square = (self.a**2 + self.b**2) / 2
        kink = (self.a - self.b) ** 2 / (2 * math.pi)
        if kink == 0:  # a linear function
            return pair.cov * mean_square, mean_square
        angle = pair.angle
        kdot = torch.add(torch.tensor(mean_square, dtype=angle.dtype, device=angle.device), angle, alpha=-kink)
        nngp = torch.addcmul(kdot * pair.cov, pair.norm_product, pair.sine, value=kink)
        return nngp, kdot

    def extra_repr(self) -> str:
        return f"a={self.a:g}, b={self.b:g}"


class ReLU(ABReLU):
    """:math:`\\phi(x) = \\max(x, 0)`: arc-cosine kernel of degree 1 (Cho & Saul 2009, eq. 6).

    .. math::
        \\mathbb{E}[\\phi(u)\\phi(v)] = \\frac{\\sqrt{v_1 v_2}}{2\\pi}
            \\big(\\sin\\theta + (\\pi - \\theta)\\cos\\theta\\big), \\qquad
        \\mathbb{E}[\\phi'(u)\\phi'(v)] = \\frac{\\pi - \\theta}{2\\pi}.
    """

    def __init__(self):
        super().__init__(0.0, 1.0)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def extra_repr(self) -> str:
        return ""


class LeakyReLU(ABReLU):
    """:math:`\\phi(x) = \\max(x, 0) + \\alpha \\min(x, 0)`; see :class:`ABReLU` with (alpha, 1)."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__(negative_slope, 1.0)

    def extra_repr(self) -> str:
        return f"negative_slope={self.a:g}"


class Abs(ABReLU):
    """:math:`\\phi(x) = |x|`; see :class:`ABReLU` with (-1, 1)."""

    def __init__(self):
        super().__init__(-1.0, 1.0)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)

    def extra_repr(self) -> str:
        return ""


class Sign(Activation):
    """:math:`\\phi(x) = \\operatorname{sign}(x)`, with sign(0) = 0 as in ``torch.sign``.

    .. math:: \\mathbb{E}[\\phi(u)\\phi(v)] = \\frac{2}{\\pi}\\arcsin c = 1 - \\frac{2\\theta}{\\pi}

    (Cho & Saul 2009, eq. 6 with n = 0, rescaled). Its derivative is zero almost everywhere, as
    are the gradients autograd gives, so it adds nothing to the NTK: :math:`\\dot K = 0`.
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    def dual(self, pair: GaussianPair, derivative: bool):
        return torch.arcsin(pair.correlation) * (2 / math.pi), 0.0


class RectifiedMonomial(Activation):
    """:math:`\\phi(x) = \\max(x, 0)^q` for an integer degree :math:`q \\ge 0` (q = 0: a step).

    The arc-cosine kernel of degree q (Cho & Saul 2009, eqs. 1 and 3),
    :math:`\\mathbb{E}[\\phi(u)\\phi(v)] = (v_1 v_2)^{q/2} J_q(\\theta) / (2\\pi)`, computed through
    the mixed half-moments :math:`M_{ab} = \\mathbb{E}[u_+^a v_+^b]` of unit-variance Gaussians
    with correlation c. Gaussian integration by parts (Stein's lemma,
    :math:`\\mathbb{E}[u\\,g] = \\mathbb{E}[\\partial_u g] + c\\,\\mathbb{E}[\\partial_v g]`) gives, for a >= 1,

    .. math::
        M_{ab} = (a-1) M_{a-2,b} + c\\, b\\, M_{a-1,b-1},

    where a term with a - 1 = 0 or b = 0 becomes a boundary term
    :math:`\\varphi(0)\\,s^{j} m_{j}` (:math:`s = \\sin\\theta`, :math:`m_j = \\mathbb{E}[z_+^j]`), and
    :math:`M_{00} = (\\pi - \\theta)/(2\\pi)`. Then
    :math:`\\mathbb{E}[\\phi'(u)\\phi'(v)] = q^2 (v_1 v_2)^{(q-1)/2} M_{q-1,q-1}` (zero for q = 0,
    whose derivative vanishes almost everywhere). Cost: :math:`O(q^2)` passes per block.
    """

    def __init__(self, degree: int):
        super().__init__()
        if not isinstance(degree, int) or degree < 0:
            raise NtkitError(f"RectifiedMonomial: degree must be an integer >= 0, got {degree!r}")
        self.degree = degree

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        if self.degree == 0:
            return (x > 0).to(x.dtype)
        return torch.relu(x) ** self.degree

    def dual(self, pair: GaussianPair, derivative: bool):
        q = self.degree
        moments = _HalfMoments(pair)
        nngp = moments(q, q) * _power(pair.norm_product, q)
        if not derivative or q == 0:
            return nngp, 0.0
        return nngp, moments(q - 1, q - 1) * (q * q) * _power(pair.norm_product, q - 1)

    def extra_repr(self) -> str:
        return f"degree={self.degree}"


def _power(norm: torch.Tensor, q: int) -> torch.Tensor:
    """:math:`n^q`, with :math:`0^0 = 0`: a step of a constant-zero input is 0."""
    return norm**q if q > 0 else (norm > 0).to(norm.dtype)


class _HalfMoments:
    """:math:`M_{ab} = \\mathbb{E}[u_+^a v_+^b]` for unit variances, memoized (see RectifiedMonomial)."""

    def __init__(self, pair: GaussianPair):
        self.c, self.s, self.memo = pair.correlation, pair.sine, {}
        self.memo[0, 0] = torch.mul(pair.angle, -1 / (2 * math.pi)).add_(0.5)

    def __call__(self, a: int, b: int) -> torch.Tensor:
        if a < b:
            a, b = b, a  # M is symmetric: (u, v) and (v, u) have the same law
        if (a, b) not in self.memo:
            first = (a - 1) * self(a - 2, b) if a >= 2 else self._boundary(b)
            second = b * self(a - 1, b - 1) if b >= 1 else self._boundary(a - 1)
            self.memo[a, b] = torch.addcmul(first, self.c, second)
        return self.memo[a, b]

    def _boundary(self, j: int) -> torch.Tensor:
        """:math:`\\varphi(0)\\, s^j\\, m_j`, with :math:`m_j = 2^{j/2-1}\\Gamma((j+1)/2)/\\sqrt{\\pi}`."""
        half_moment = 2 ** (j / 2 - 1) * math.gamma((j + 1) / 2) / math.sqrt(math.pi)
        return self.s**j * (_PHI0 * half_moment)
