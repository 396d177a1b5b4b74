"""Polynomial nonlinearities, exact for any input variance through their Hermite expansion."""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.polynomial import hermite_e, polynomial

from .._errors import NtkitError
from ._gaussian import GaussianPair
from .activation import Activation


class Polynomial(Activation):
    """:math:`\\phi(x) = \\sum_i p_i x^i` for coefficients ``coef = (p_0, p_1, ...)``.

    Writing :math:`u = \\sqrt{v_1} z_1`, each :math:`\\phi(\\sqrt{v} z) = \\sum_n \\beta_n(v) He_n(z)`
    in probabilists' Hermite polynomials, and Mehler's formula
    :math:`\\mathbb{E}[He_m(z_1) He_n(z_2)] = \\delta_{mn}\\, n!\\, c^n` (O'Donnell 2014, Prop. 11.31;
    Daniely et al. 2016, Sec. 5) gives, exactly for any variances,

    .. math::
        \\mathbb{E}[\\phi(u)\\phi(v)] = \\sum_n n!\\, \\beta_n(v_1) \\beta_n(v_2)\\, c^n,
        \\qquad \\beta_n(v) = \\sum_i p_i\\, v^{i/2} A_{in},

    where :math:`x^i = \\sum_n A_{in} He_n(x)`. The derivative term is the same for
    :math:`\\phi'`. Cost: one Horner pass per degree.
    """

    def __init__(self, coef):
        super().__init__()
        coef = np.asarray(coef, dtype=np.float64)
        if coef.ndim != 1 or coef.size == 0 or not np.all(np.isfinite(coef)):
            raise NtkitError(f"{self.name}: coef must be a non-empty 1-D sequence of finite numbers, got {coef!r}")
        self.register_buffer("coef", torch.as_tensor(coef), persistent=False)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for p in reversed(self.coef.tolist()):  # Horner
            out = out * x + p
        return out

    def dual(self, pair: GaussianPair, derivative: bool):
        coef = self.coef.tolist()
        nngp = _mehler(pair, coef)
        if not derivative:
            return nngp, None
        slope = polynomial.polyder(coef).tolist() if len(coef) > 1 else [0.0]
        return nngp, _mehler(pair, slope)

    def extra_repr(self) -> str:
        return f"coef={self.coef.tolist()}"


class Monomial(Polynomial):
    """:math:`\\phi(x) = x^q`; see :class:`Polynomial`. For unit variances,
    :math:`\\mathbb{E}[u^q v^q] = \\sum_n n!\\, A_{qn}^2\\, c^n` (Isserlis' theorem)."""

    def __init__(self, degree: int):
        if not isinstance(degree, int) or degree < 0:
            raise NtkitError(f"Monomial: degree must be an integer >= 0, got {degree!r}")
        super().__init__([0.0] * degree + [1.0])
        self.degree = degree

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return x**self.degree

    def extra_repr(self) -> str:
        return f"degree={self.degree}"


class Hermite(Polynomial):
    """The normalised probabilists' Hermite polynomial :math:`\\phi(x) = He_n(x) / \\sqrt{n!}`.

    Orthonormal under the standard Gaussian, so for unit-variance inputs
    :math:`\\mathbb{E}[\\phi(u)\\phi(v)] = c^n` (neural-tangents ``Hermite``, which assumes unit
    variance); ntkit's kernel is exact for any variance (see :class:`Polynomial`).
    """

    def __init__(self, degree: int):
        if not isinstance(degree, int) or degree < 0:
            raise NtkitError(f"Hermite: degree must be an integer >= 0, got {degree!r}")
        power = hermite_e.herme2poly([0.0] * degree + [1.0]) / math.sqrt(math.factorial(degree))
        super().__init__(power)
        self.degree = degree

    def extra_repr(self) -> str:
        return f"degree={self.degree}"


def _mehler(pair: GaussianPair, coef: list[float]) -> torch.Tensor:
    """:math:`\\sum_n n!\\, \\beta_n(v_1)\\beta_n(v_2)\\, c^n` (see :class:`Polynomial`)."""
    degree = len(coef) - 1
    # A[i, n]: HermiteE coefficients of x**i; rows scaled by p_i.
    to_hermite = np.zeros((degree + 1, degree + 1))
    for i in range(degree + 1):
        row = hermite_e.poly2herme([0.0] * i + [1.0])
        to_hermite[i, : row.size] = row
    scaled = torch.as_tensor(np.asarray(coef)[:, None] * to_hermite, dtype=pair.cov.dtype, device=pair.cov.device)
    powers = torch.arange(degree + 1, dtype=pair.cov.dtype, device=pair.cov.device)
    beta1 = _power_series(pair.std1, powers) @ scaled  # (..., degree + 1)
    beta2 = _power_series(pair.std2, powers) @ scaled
    c = pair.correlation
    total = None
    for n in range(degree, -1, -1):
        term = (beta1[..., n] * beta2[..., n]) * float(math.factorial(n))
        total = term if total is None else torch.addcmul(term, total, c)
    return total


def _power_series(std: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
    """``std[..., None] ** powers``, with ``0 ** 0 = 1``."""
    return std.unsqueeze(-1) ** powers
