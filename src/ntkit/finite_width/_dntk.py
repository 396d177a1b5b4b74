"""The differential NTK (dNTK) of deep MLPs at initialization: RYH's P and Q tensors.

The dNTK (Roberts, Yaida & Hanin (RYH) 2022, §11.1) is the derivative of the NTK along the
gradient of one output,

.. math::
    \\widehat{d\\Theta}_{i_0 i_1 i_2;\\alpha_0\\alpha_1\\alpha_2}
    = \\sum_{\\mu\\nu} \\lambda_{\\mu\\nu}\\,
      \\frac{\\partial \\hat\\Theta_{i_1 i_2;\\alpha_1\\alpha_2}}{\\partial\\theta_\\mu}
      \\frac{\\partial z_{i_0;\\alpha_0}}{\\partial\\theta_\\nu},

so that one gradient-descent step with error factors :math:`\\epsilon_{i;\\alpha} = \\partial
\\mathcal L / \\partial z_{i;\\alpha}` moves the NTK by :math:`-\\eta \\sum_{i_0\\alpha}
\\widehat{d\\Theta}_{i_0 i_1 i_2;\\alpha\\alpha_1\\alpha_2}\\,\\epsilon_{i_0;\\alpha} + O(\\eta^2)`.
Its mean vanishes (sign flip of the last layer); the leading statistic is its O(1/n) correlator
with one output (RYH §11.2, with the note's index placement)

.. math::
    n\\,\\mathbb E\\big[\\widehat{d\\Theta}_{i_0 i_1 i_2;\\alpha_0\\alpha_1\\alpha_2}
    z_{i_3;\\alpha_3}\\big] = \\delta_{i_0 i_3}\\delta_{i_1 i_2} P_{\\alpha_0\\alpha_1\\alpha_2\\alpha_3}
    + \\delta_{i_0 i_1}\\delta_{i_2 i_3} Q_{\\alpha_0\\alpha_1\\alpha_2\\alpha_3}
    + \\delta_{i_0 i_2}\\delta_{i_1 i_3} Q_{\\alpha_0\\alpha_2\\alpha_1\\alpha_3} + O(1/n).

Recursions (derived here from the exact dNTK forward equation of the note §2.3 by Wick
contraction of the new layer's weights and Stein's lemma for the lower layers, as in the note
§2.0; they play the role of RYH §11.2's P and Q recursions, whose equations were not checked
line by line: the book text was not available). Samples 0..3 stand for
:math:`\\alpha_0..\\alpha_3`; expectations are at :math:`K = K^{(\\ell)}`,
:math:`\\Theta = \\Theta^{(\\ell)}`, :math:`F, B, P, Q` are layer :math:`\\ell`'s and
:math:`C_W, \\lambda_W` layer :math:`\\ell+1`'s; :math:`S^{f}_\\beta = \\langle\\partial_\\beta f\\rangle`
for a product f of two factors (β runs over its two samples):

.. math::
    P' &= \\lambda_W C_W\\big[\\langle\\sigma'_0\\sigma_3\\sigma'_1\\sigma_2\\rangle\\Theta_{01}
          + \\langle\\sigma'_0\\sigma_3\\sigma_1\\sigma'_2\\rangle\\Theta_{02}\\big]
        + C_W^2\\big[\\langle\\sigma'_0\\sigma_3\\sigma''_1\\sigma'_2\\rangle\\Theta_{01}
          + \\langle\\sigma'_0\\sigma_3\\sigma'_1\\sigma''_2\\rangle\\Theta_{02}\\big]\\Theta_{12} \\\\
      &+ \\lambda_W C_W \\textstyle\\sum_{\\beta\\gamma} S^{\\sigma'_0\\sigma_3}_\\beta
          \\big[S^{\\sigma'_1\\sigma_2}_\\gamma F_{\\beta 0\\gamma 1}
          + S^{\\sigma_1\\sigma'_2}_\\gamma F_{\\beta 0\\gamma 2}\\big]
        + C_W^2\\Theta_{12} \\textstyle\\sum_{\\beta\\gamma} S^{\\sigma'_0\\sigma_3}_\\beta
          \\big[S^{\\sigma''_1\\sigma'_2}_\\gamma F_{\\beta 0\\gamma 1}
          + S^{\\sigma'_1\\sigma''_2}_\\gamma F_{\\beta 0\\gamma 2}\\big] \\\\
      &+ C_W^2 \\langle\\sigma'_1\\sigma'_2\\rangle\\big[\\langle\\sigma''_0\\sigma_3\\rangle P_{0120}
          + \\langle\\sigma'_0\\sigma'_3\\rangle P_{0123}\\big], \\\\
    Q' &= \\lambda_W C_W\\big[\\langle\\sigma_0\\sigma'_1\\sigma'_2\\sigma_3\\rangle\\Theta_{12}
          + \\textstyle\\sum_{\\beta\\gamma} S^{\\sigma_0\\sigma'_1}_\\beta
            S^{\\sigma'_2\\sigma_3}_\\gamma F_{\\beta 1\\gamma 2}\\big]
        + C_W^2\\big[\\langle\\sigma'_0\\sigma_3\\sigma''_1\\sigma'_2\\rangle\\Theta_{01}
          + \\langle\\sigma'_0\\sigma_3\\sigma'_1\\sigma''_2\\rangle\\Theta_{02}\\big]\\Theta_{12} \\\\
      &+ C_W^2 \\Theta_{01} \\textstyle\\sum_{\\beta\\gamma} S^{\\sigma'_0\\sigma''_1}_\\beta
            S^{\\sigma'_2\\sigma_3}_\\gamma F_{\\beta 1\\gamma 2}
        + C_W^2 \\langle\\sigma'_0\\sigma'_1\\rangle\\big[\\langle\\sigma''_2\\sigma_3\\rangle B_{0122}
          + \\langle\\sigma''_2\\sigma_3\\rangle Q_{0122} + \\langle\\sigma'_2\\sigma'_3\\rangle Q_{0123}\\big],

with :math:`F, B` (RYH §8.3; the note §2.2, its index order) propagated alongside. Layer 1 is
linear in its parameters, so :math:`F = B = P = Q = 0` there; at L = 2 only the terms without
F, B, P, Q survive: the closed form of the note §2.3, **exact at any width** (the first layer is
exactly Gaussian). For L >= 3 the result is the leading order, with O(1/n) relative corrections.
Equal hidden widths (unequal ones would put :math:`n_\\ell/n_{\\ell-1}` on the inherited terms).

**ReLU family.** :math:`\\sigma''` is a distribution; autograd (and so ``torch.func`` on a real
network) uses the a.e. derivative, :math:`\\sigma'' = 0`. These functions return the statistics
of *that* dNTK: the :math:`\\sigma''` of the network's own chain rule is dropped (the curvature
terms :math:`\\langle\\sigma'_0\\sigma_3\\sigma''_1\\sigma'_2\\rangle`, the F terms with
:math:`S^{\\sigma''_1\\sigma'_2}`, :math:`S^{\\sigma'_0\\sigma''_1}` and the B term), while the
Stein-lemma weights (:math:`\\langle\\sigma''_0\\sigma_3\\rangle` and those inside
:math:`S^{\\sigma'\\sigma}`), identities of Gaussian integrals, keep their distributional value.
(With the distributional :math:`\\sigma''` the dNTK is not even defined for repeated samples:
a delta function times a step at the same z.) A gradient-descent step on a ReLU network also flips
activation patterns, which this a.e. dNTK misses (the note, pitfall 9): prefer smooth activations
for training-time predictions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._errors import NtkitError
from ..layers.combinators import Serial
from ..layers.dense import Dense
from ..layers.rectified import ABReLU
from ._architecture import _flatten, check_points, check_width, read_mlp
from ._gaussian_products import ProductGaussian


class DNTKStatistics(NamedTuple):
    """RYH's dNTK tensors at the output layer, each (N, N, N, N) float64 over the N inputs.

    ``p[a0, a1, a2, a3]`` and ``q[a0, a1, a2, a3]``: see :func:`dntk_statistics`.
    """

    p: torch.Tensor
    q: torch.Tensor


def dntk_statistics(net, x: torch.Tensor, *, width: int | None = None) -> DNTKStatistics:
    """The dNTK-preactivation correlators P and Q of RYH §11.2 for every quadruple of inputs.

    For equal hidden widths n and any output indices,

    .. math::
        n\\,\\mathbb E[\\widehat{d\\Theta}_{i_0i_1i_2;\\alpha_0\\alpha_1\\alpha_2} z_{i_3;\\alpha_3}]
        = \\delta_{i_0i_3}\\delta_{i_1i_2}P_{\\alpha_0\\alpha_1\\alpha_2\\alpha_3}
        + \\delta_{i_0i_1}\\delta_{i_2i_3}Q_{\\alpha_0\\alpha_1\\alpha_2\\alpha_3}
        + \\delta_{i_0i_2}\\delta_{i_1i_3}Q_{\\alpha_0\\alpha_2\\alpha_1\\alpha_3},

    exactly at any n for one hidden layer (L = 2; the note §2.3's closed form), to leading
    order in 1/n for deeper networks (the recursions in this module's docstring). The dNTK is
    :math:`\\sum_{\\mu\\nu}\\lambda_{\\mu\\nu}\\,\\partial_\\mu\\hat\\Theta_{i_1i_2}\\,
    \\partial_\\nu z_{i_0}` in RYH's learning-rate tensor λ (ntkit's ``"ntk"`` parameterization:
    every parameter at learning rate 1, see :func:`read_mlp`). For the ReLU family it is the dNTK
    of the a.e. derivative (as autograd computes it), see the module docstring.

    Cost: O(L N^4) entries, each a few Gaussian integrals over up to four samples: exact for
    the ReLU family (at most 2 distinct inputs supported), a product trapezoidal rule for smooth
    activations (four distinct inputs: ~2e6 nodes, <= 4e-7 absolute error measured for tanh;
    see ``_gaussian_products``). About 1.5 s for N = 4, L = 3 (tanh, one thread). Meant for a
    handful of inputs; repeated inputs are computed once.

    Parameters
    ----------
    net : Serial or MLPSpec
        ``serial(Dense, act, ..., Dense)`` with equal hidden widths, or an :class:`MLPSpec`.
    x : Tensor (N, d)
    width : int, optional
        The hidden width n (>= 2); only the standard parameterization's learning rates
        :math:`\\lambda_W = n` depend on it. Default: the network's own.

    Returns
    -------
    DNTKStatistics
        ``p``, ``q``: (N, N, N, N) float64. Both vanish for a network without hidden layer.

    References
    ----------
    D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*, CUP 2022,
    §11.1 (dNTK, its forward equation), §11.2 (P, Q), §8.3 (B, F). Equation numbers not quoted:
    not checked line by line against the book.
    """
    x = check_points(x, "x")
    spec = read_mlp(net, None if width is None else check_width(width), x.shape[1])
    x, inverse = torch.unique(x, dim=0, return_inverse=True)  # repeated inputs: computed once
    count = x.shape[0]
    q0 = x @ x.T / x.shape[1]
    k = spec.c_b[0] + spec.c_w[0] * q0
    if bool((k.diagonal() <= 0).any()):
        raise NtkitError(
            "an input has zero first-layer variance (a zero input with no bias, or W_std = 0): "
            "the dNTK statistics are degenerate there; give the first Dense a bias or drop that input"
        )
    for index, act in enumerate(spec.activations):
        if isinstance(act, ABReLU) and count > 2:
            raise NtkitError(
                f"activations[{index}] ({type(act).__name__}): the dNTK statistics of the ReLU family are "
                f"implemented for at most 2 distinct inputs (got {count}): more need Gaussian orthant "
                "integrals over 3-4 samples; pass fewer inputs or use a smooth activation (Tanh, Erf, GELU)"
            )
    state = {
        "K": k, "T": spec.lambda_b[0] + spec.lambda_w[0] * q0,
        **{name: q0.new_zeros((count,) * 4) for name in ("F", "B", "P", "Q")},
    }
    for layer, act in enumerate(spec.activations):
        coefficients = spec.c_w[layer + 1], spec.c_b[layer + 1], spec.lambda_w[layer + 1], spec.lambda_b[layer + 1]
        gauss = ProductGaussian(act, state["K"], f"activations[{layer}]")
        state = _layer(gauss, state, *coefficients)
    expand = lambda t: t[inverse][:, inverse][:, :, inverse][:, :, :, inverse]  # noqa: E731
    return DNTKStatistics(expand(state["P"]), expand(state["Q"]))


def expected_ntk_step(
    net, x_train: torch.Tensor, x: torch.Tensor | None = None, *, width: int | None = None,
    outputs: int | None = None,
) -> torch.Tensor:
    """The mean NTK change of one gradient-descent step, per unit learning rate, times n.

    For the loss :math:`\\frac12\\sum_{i,\\tilde\\alpha}(z_{i;\\tilde\\alpha} - y_{i;\\tilde\\alpha})^2`
    over ``x_train`` and the step :math:`\\theta \\to \\theta - \\eta\\lambda\\nabla\\mathcal L`, the
    diagonal NTK of every output i moves on average by (RYH §11.2; any targets y, since
    :math:`\\mathbb E\\,\\widehat{d\\Theta} = 0`)

    .. math::
        \\mathbb E[\\Delta\\hat\\Theta_{ii;\\alpha_1\\alpha_2}] = \\frac{\\eta}{n}\\,c_{\\alpha_1\\alpha_2}
        + O(\\eta^2), \\qquad
        c_{\\alpha_1\\alpha_2} = -\\sum_{\\tilde\\alpha}\\big[n_L P_{\\tilde\\alpha\\alpha_1\\alpha_2\\tilde\\alpha}
        + Q_{\\tilde\\alpha\\alpha_1\\alpha_2\\tilde\\alpha} + Q_{\\tilde\\alpha\\alpha_2\\alpha_1\\tilde\\alpha}\\big].

    This function returns c, (N, N) for the N points ``x`` (default ``x_train``). With one
    output and one point it is :math:`-(P + 2Q)` (the note §2.3). Exact at any n for L = 2.
    For the ReLU family it is the a.e. part only (activation flips excluded, see the module
    docstring), i.e. the mean of ``torch.func``'s derivative, not the mean step of a real
    ReLU network at finite :math:`\\eta`.

    Parameters
    ----------
    net, width : see :func:`dntk_statistics`.
    x_train : Tensor (N_train, d)
    x : Tensor (N, d), optional
    outputs : int, optional
        :math:`n_L`; default the last Dense's ``out_features`` (required for an MLPSpec).
    """
    x_train = check_points(x_train, "x_train")
    points = x_train if x is None else check_points(x, "x")
    if points.shape[1] != x_train.shape[1]:
        raise NtkitError(f"x_train has {x_train.shape[1]} features but x has {points.shape[1]}")
    outputs = _outputs(net) if outputs is None else outputs
    if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs < 1:
        raise NtkitError(f"outputs must be a positive integer, got {outputs!r}")
    stats = dntk_statistics(net, torch.cat([x_train, points]), width=width)
    train, test = slice(0, x_train.shape[0]), slice(x_train.shape[0], None)
    diag = lambda t: torch.diagonal(t[train][:, test][:, :, test][:, :, :, train], dim1=0, dim2=3)  # noqa: E731
    p, q = diag(stats.p), diag(stats.q)  # (N, N, N_train)
    return -(outputs * p + q + q.transpose(0, 1)).sum(-1)


def _outputs(net) -> int:
    if not isinstance(net, Serial):
        raise NtkitError("pass outputs= (the number of network outputs n_L) with an MLPSpec")
    denses = [layer for _, layer in _flatten(net, "serial") if isinstance(layer, Dense)]
    if not denses:
        raise NtkitError("finite_width needs serial(Dense, act, ..., Dense)")
    return denses[-1].out_features


def _layer(gauss: ProductGaussian, s: dict, c_w: float, c_b: float, l_w: float, l_b: float) -> dict:
    """One hidden layer and the next Dense: K, Theta, F, B, P, Q of layer l+1 from layer l's."""
    terms = _Terms(gauss, s, c_w, l_w)
    e, theta, count = terms.e, s["T"], s["T"].shape[0]
    new = {name: theta.new_zeros((count,) * 4) for name in ("F", "B", "P", "Q")}
    quadruples = torch.cartesian_prod(*[torch.arange(count)] * 4).tolist()
    for a0, a1, a2, a3 in sorted(quadruples, key=lambda index: sorted(set(index))):  # one sample set at a time
        new["P"][a0, a1, a2, a3] = terms.p(a0, a1, a2, a3)
        new["Q"][a0, a1, a2, a3] = terms.q(a0, a1, a2, a3)
        new["F"][a0, a1, a2, a3] = terms.f_next(a0, a1, a2, a3)
        new["B"][a0, a1, a2, a3] = terms.b_next(a0, a1, a2, a3)
    g = theta.new_tensor([[e((i, 0), (j, 0)) for j in range(count)] for i in range(count)])
    gp = theta.new_tensor([[e((i, 1), (j, 1)) for j in range(count)] for i in range(count)])
    new["K"] = c_b + c_w * g
    new["T"] = l_b + l_w * g + c_w * gp * theta
    return new


class _Terms:
    """The entries of P, Q, F, B at layer l+1 (module docstring; samples 0..3 = a0..a3)."""

    def __init__(self, gauss: ProductGaussian, s: dict, c_w: float, l_w: float):
        self.gauss, self.cw2, self.lc = gauss, c_w * c_w, l_w * c_w
        self.smooth = not gauss.relu  # the network's own sigma'' (a.e. zero for the ReLU family)
        self.theta, self.f, self.b, self.p_low, self.q_low = (s[k].tolist() for k in ("T", "F", "B", "P", "Q"))

    def e(self, *factors) -> float:
        return self.gauss.expect(factors)

    def stein(self, pa: int, a: int, pb: int, b: int):
        """((a, <d_a (s^(pa)_a s^(pb)_b)>), (b, <d_b ...>)): Stein's lemma weights of one neuron's product."""
        return ((a, self.e((a, pa + 1), (b, pb))), (b, self.e((a, pa), (b, pb + 1))))

    def f_term(self, first, ntk_first: int, second, ntk_second: int) -> float:
        """sum_{beta, gamma} <d_beta first> <d_gamma second> F_{beta, ntk_first, gamma, ntk_second}."""
        return sum(
            wb * wg * self.f[beta][ntk_first][gamma][ntk_second]
            for beta, wb in self.stein(*first) for gamma, wg in self.stein(*second)
        )

    def curvature(self, a0, a1, a2, a3) -> float:
        """C_W^2 <s'_0 s_3 (s''_1 s'_2 Theta_01 + s'_1 s''_2 Theta_02)> Theta_12: the same in P and Q."""
        e, t = self.e, self.theta
        first = e((a0, 1), (a3, 0), (a1, 2), (a2, 1)) * t[a0][a1]
        second = e((a0, 1), (a3, 0), (a1, 1), (a2, 2)) * t[a0][a2]
        return self.cw2 * t[a1][a2] * (first + second)

    def p(self, a0, a1, a2, a3) -> float:
        """The delta_{i0 i3} delta_{i1 i2} pattern."""
        e, t, k = self.e, self.theta, (1, a0, 0, a3)  # k: neuron k's product s'_0 s_3
        out = self.lc * e((a0, 1), (a3, 0), (a1, 1), (a2, 0)) * t[a0][a1]
        out += self.lc * e((a0, 1), (a3, 0), (a1, 0), (a2, 1)) * t[a0][a2]
        out += self.lc * (self.f_term(k, a0, (1, a1, 0, a2), a1) + self.f_term(k, a0, (0, a1, 1, a2), a2))
        (_, s0), (_, s3) = self.stein(*k)
        lower = self.p_low[a0][a1][a2]
        out += self.cw2 * e((a1, 1), (a2, 1)) * (s0 * lower[a0] + s3 * lower[a3])
        if self.smooth:
            inherited = self.f_term(k, a0, (2, a1, 1, a2), a1) + self.f_term(k, a0, (1, a1, 2, a2), a2)
            out += self.curvature(a0, a1, a2, a3) + self.cw2 * t[a1][a2] * inherited
        return out

    def q(self, a0, a1, a2, a3) -> float:
        """The delta_{i0 i1} delta_{i2 i3} pattern."""
        e, t, m = self.e, self.theta, (1, a2, 0, a3)  # m: neuron m's product s'_2 s_3
        out = self.lc * (e((a0, 0), (a1, 1), (a2, 1), (a3, 0)) * t[a1][a2] + self.f_term((0, a0, 1, a1), a1, m, a2))
        (_, s2), (_, s3) = self.stein(*m)
        lower = self.q_low[a0][a1][a2]
        out += self.cw2 * e((a0, 1), (a1, 1)) * (s2 * lower[a2] + s3 * lower[a3])
        if self.smooth:
            out += self.curvature(a0, a1, a2, a3) + self.cw2 * t[a0][a1] * self.f_term((1, a0, 2, a1), a1, m, a2)
            out += self.cw2 * e((a0, 1), (a1, 1)) * e((a2, 2), (a3, 0)) * self.b[a0][a1][a2][a2]
        return out

    def f_next(self, a, b, c, d) -> float:
        """F'_abcd = C_W^2 [<s_a s'_b s_c s'_d> Theta_bd + sum S_beta S_gamma F_{beta b gamma d}] (note §2.2)."""
        same_neuron = self.e((a, 0), (b, 1), (c, 0), (d, 1)) * self.theta[b][d]
        return self.cw2 * (same_neuron + self.f_term((0, a, 1, b), b, (0, c, 1, d), d))

    def b_next(self, a, b, c, d) -> float:
        """B'_{abcd} = C_W^2 [<s'_a s'_b s'_c s'_d> Theta_ac Theta_bd + <s'_a s'_b> <s'_c s'_d> B_abcd]."""
        e = self.e
        return self.cw2 * (
            e((a, 1), (b, 1), (c, 1), (d, 1)) * self.theta[a][c] * self.theta[b][d]
            + e((a, 1), (b, 1)) * e((c, 1), (d, 1)) * self.b[a][b][c][d]
        )
