"""Closed-form kernel maps against independent computations: quadrature and the papers' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

import ntkit as nk
from ntkit.layers._gaussian import GaussianPair

# (v1, v2, correlation) triples: unequal variances, correlations from -1 to 1 (both ends).
VAR1 = torch.tensor([0.3, 1.0, 2.5, 0.7, 1.8, 1.2, 0.9, 2.0], dtype=torch.float64)
VAR2 = torch.tensor([1.1, 1.0, 0.4, 2.2, 1.8, 0.6, 1.5, 2.0], dtype=torch.float64)
CORR = torch.tensor([-1.0, -0.93, -0.4, 0.0, 0.35, 0.8, 0.999, 1.0], dtype=torch.float64)
COV = CORR * (VAR1 * VAR2).sqrt()


def duals(activation: nk.Activation) -> tuple[torch.Tensor, torch.Tensor]:
    nngp, kdot = activation.dual(GaussianPair(COV, VAR1, VAR2, "none"), derivative=True)
    return nngp, torch.as_tensor(kdot, dtype=torch.float64).expand_as(nngp)


SMOOTH = [
    nk.Erf(1.3, 0.7, 0.2),
    nk.Erf(),
    nk.GELU(),
    nk.Sin(1.1, 0.8, 0.3),
    nk.Cos(0.9, 1.2, -0.4),
    nk.Rbf(0.7),
    nk.Exp(0.5, 0.6),
    nk.Gaussian(1.2, -0.8),
    nk.Gaussian(0.8, 0.02),  # b > 0: the integrand decays as exp(-(1/2 - 2 b v) z^2)
    nk.Monomial(3),
    nk.Polynomial([0.1, -0.5, 0.3, 0.2]),
    nk.Hermite(4),
]


@pytest.mark.parametrize("activation", SMOOTH, ids=lambda a: repr(a))
def test_smooth_closed_forms_match_quadrature(activation):
    """Every smooth closed form equals Elementwise(fn) of the same function to <= 1e-9.

    The quadrature (trapezoid, 201 nodes) is accurate to ~1e-13 for these entire functions at
    variances <= 2.5 (Elementwise docstring), so 1e-9 relative checks the formula, not the rule.
    """
    expected = duals(nk.Elementwise(activation.fn, order=201))
    for got, want in zip(duals(activation), expected):
        scale = want.abs().max()
        assert torch.allclose(got, want, rtol=0, atol=1e-9 * float(scale)), (got, want)


def _polar_expectation(f, g, degree: int, var1: float, var2: float, c: float) -> float:
    """E[f(u) g(v)] for f, g positively homogeneous of total degree ``degree``, by 1-D quadrature.

    With (z1, z2) = r (cos a, sin a), u = s1 z1, v = s2 (c z1 + sqrt(1 - c^2) z2), the radial
    integral is int_0^inf r^degree e^{-r^2/2} r dr / (2 pi) = 2^{degree/2} Gamma(degree/2 + 1) / (2 pi),
    and the angular integrand is piecewise smooth with kinks where u or v change sign, which are
    passed to scipy.integrate.quad as breakpoints.
    """
    s1, s2, s = math.sqrt(var1), math.sqrt(var2), math.sqrt(max(0.0, 1 - c * c))

    def angular(a):
        return f(s1 * math.cos(a)) * g(s2 * (c * math.cos(a) + s * math.sin(a)))

    kinks = [math.pi / 2, 3 * math.pi / 2]
    phase = math.atan2(c, s)  # v is proportional to sin(a + phase): zero at a = k pi - phase
    kinks += [(k * math.pi - phase) % (2 * math.pi) for k in range(2)]
    points = sorted(set(round(p, 15) for p in kinks if 0 < p < 2 * math.pi))
    value, _ = integrate.quad(angular, 0, 2 * math.pi, points=points, limit=200, epsabs=1e-14, epsrel=1e-13)
    radial = 2 ** (degree / 2) * math.gamma(degree / 2 + 1) / (2 * math.pi)
    return value * radial


def _relu_power(q):
    return lambda x: max(x, 0.0) ** q if q > 0 else float(x > 0)


HOMOGENEOUS = [
    # (layer, phi, phi', degree of phi)
    (nk.ReLU(), _relu_power(1), _relu_power(0), 1),
    (nk.LeakyReLU(0.2), lambda x: x if x > 0 else 0.2 * x, lambda x: 1.0 if x > 0 else 0.2, 1),
    (nk.ABReLU(-0.4, 1.3), lambda x: 1.3 * x if x > 0 else -0.4 * x, lambda x: 1.3 if x > 0 else -0.4, 1),
    (nk.Abs(), abs, lambda x: 1.0 if x > 0 else -1.0, 1),
    (nk.Sign(), lambda x: float(np.sign(x)), None, 0),
    (nk.RectifiedMonomial(0), _relu_power(0), None, 0),
    (nk.RectifiedMonomial(1), _relu_power(1), _relu_power(0), 1),
    (nk.RectifiedMonomial(2), _relu_power(2), lambda x: 2 * max(x, 0.0), 2),
    (nk.RectifiedMonomial(3), _relu_power(3), lambda x: 3 * max(x, 0.0) ** 2, 3),
    (nk.RectifiedMonomial(5), _relu_power(5), lambda x: 5 * max(x, 0.0) ** 4, 5),
]


@pytest.mark.parametrize("case", HOMOGENEOUS, ids=lambda c: repr(c[0]))
def test_kinked_closed_forms_match_polar_quadrature(case):
    """Arc-cosine-type kernels against adaptive 1-D quadrature in polar coordinates (~1e-13)."""
    layer, phi, slope, degree = case
    nngp, kdot = duals(layer)
    for i in range(len(CORR)):
        args = (float(VAR1[i]), float(VAR2[i]), float(CORR[i]))
        want = _polar_expectation(phi, phi, 2 * degree, *args)
        assert abs(float(nngp[i]) - want) <= 1e-11 * max(1.0, abs(want)), (i, float(nngp[i]), want)
        # phi' vanishes almost everywhere for degree 0 (Sign, step): no NTK term.
        want_slope = 0.0 if slope is None else _polar_expectation(slope, slope, 2 * degree - 2, *args)
        assert abs(float(kdot[i]) - want_slope) <= 1e-11 * max(1.0, abs(want_slope)), (i, float(kdot[i]), want_slope)


def test_arc_cosine_kernels_of_cho_and_saul():
    """Cho & Saul 2009, eq. (1)-(3): k_n = |x||y| ... J_n(theta) / pi for n = 0, 1, 2 (unit variances).

    Their kernel is 2 E[Theta(w.x) Theta(w.y) (w.x)^n (w.y)^n]; ours is E[...] without the 2.
    """
    theta = torch.arccos(CORR)
    sin, cos = torch.sin(theta), torch.cos(theta)
    j = {
        0: math.pi - theta,
        1: sin + (math.pi - theta) * cos,
        2: 3 * sin * cos + (math.pi - theta) * (1 + 2 * cos**2),
    }
    for n, jn in j.items():
        pair = GaussianPair(CORR.clone(), torch.ones(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64), "none")
        got, _ = nk.RectifiedMonomial(n).dual(pair, derivative=False)
        torch.testing.assert_close(got, jn / (2 * math.pi), rtol=1e-13, atol=1e-15)


def test_erf_kernel_of_williams():
    """Williams 1997, eq. (11), for phi = erf(b x): (2/pi) asin(2 b^2 k / sqrt((1 + 2 b^2 v1)(1 + 2 b^2 v2)))."""
    b = 0.7
    want = (2 / math.pi) * torch.arcsin(2 * b * b * COV / torch.sqrt((1 + 2 * b * b * VAR1) * (1 + 2 * b * b * VAR2)))
    got, _ = nk.Erf(1.0, b, 0.0).dual(GaussianPair(COV, VAR1, VAR2, "none"), derivative=False)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)


def _relu_ntk_numpy(x: np.ndarray, depth: int, w_var: float, b_var: float):
    """NNGP and NTK of a bias-ful ReLU MLP, written independently in NumPy from Arora et al. 2019
    (eqs. 9-11: Sigma^(h) = c E[relu relu], Sigma_dot^(h) = c E[relu' relu'],
    Theta^(h) = Theta^(h-1) Sigma_dot^(h) + Sigma^(h)), with neural-tangents' input scaling x.x'/d.
    """
    sigma = w_var * (x @ x.T) / x.shape[1] + b_var
    theta = sigma.copy()
    for _ in range(depth):
        norms = np.sqrt(np.outer(np.diag(sigma), np.diag(sigma)))
        cos = np.clip(sigma / norms, -1, 1)
        np.fill_diagonal(cos, 1.0)
        angle = np.arccos(cos)
        relu = norms * (np.sin(angle) + (np.pi - angle) * cos) / (2 * np.pi)
        relu_dot = (np.pi - angle) / (2 * np.pi)
        sigma = w_var * relu + b_var
        theta = w_var * relu_dot * theta + sigma
    return sigma, theta


@pytest.mark.parametrize("depth", [1, 3, 7])
def test_deep_relu_ntk_of_arora_et_al(depth):
    x = np.random.default_rng(depth).standard_normal((9, 6))
    w_std, b_std = 1.4, 0.3
    layers = [nk.Dense(64, w_std, b_std)]
    for _ in range(depth):
        layers += [nk.ReLU(), nk.Dense(64, w_std, b_std)]
    k = nk.serial(*layers).kernel(torch.as_tensor(x))
    sigma, theta = _relu_ntk_numpy(x, depth, w_std**2, b_std**2)
    np.testing.assert_allclose(k.nngp.numpy(), sigma, rtol=1e-13)
    np.testing.assert_allclose(k.ntk.numpy(), theta, rtol=1e-13)


@pytest.mark.parametrize("function", [torch.tanh, torch.sigmoid, torch.nn.functional.softplus], ids=lambda f: f.__name__)
def test_elementwise_accuracy_against_adaptive_integration(function):
    """The default rule's stated accuracy, against scipy's adaptive 2-D integration."""
    var1 = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    var2 = var1 * 0.8
    corr = torch.tensor([0.3, 0.95, -0.6], dtype=torch.float64)
    cov = corr * (var1 * var2).sqrt()
    got, _ = nk.Elementwise(function).dual(GaussianPair(cov, var1, var2, "none"), derivative=False)
    numpy_fn = {"tanh": np.tanh, "sigmoid": lambda t: 1 / (1 + np.exp(-t)), "softplus": lambda t: np.logaddexp(0, t)}
    f = numpy_fn[function.__name__]
    for i in range(3):
        s1, s2, c = math.sqrt(var1[i]), math.sqrt(var2[i]), float(corr[i])
        s = math.sqrt(1 - c * c)

        def density(z2, z1):
            return f(s1 * z1) * f(s2 * (c * z1 + s * z2)) * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)

        want, _ = integrate.dblquad(density, -12, 12, -12, 12, epsabs=1e-14, epsrel=1e-12)
        assert abs(float(got[i]) - want) <= 1e-11 * abs(want), (i, float(got[i]), want)


def test_gaussian_with_infinite_moments_raises():
    net = nk.serial(nk.Dense(8, W_std=2.0), nk.Gaussian(1.0, 0.5))
    with pytest.raises(nk.NtkitError, match=r"serial\[1\] \(Gaussian\).*infinite"):
        net.kernel(torch.ones(2, 3))


def test_activation_after_concatenation_needs_a_dense():
    net = nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.ReLU(), nk.Identity()), nk.FanInConcat(), nk.ReLU())
    with pytest.raises(nk.NtkitError, match=r"serial\[4\] \(ReLU\).*not Gaussian"):
        net.kernel(torch.ones(2, 3))
