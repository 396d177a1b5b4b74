"""The four-point statistics V, D, F, A, B of an MLP at initialization, for all N inputs (O(L N^4))."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._errors import NtkitError
from ._architecture import check_points, check_width, read_mlp
from ._corrections import _check_variances
from ._moments import QMC_CHUNK, layer_moments, left, pair_layout, right

#: Default memory limit of :func:`four_point` (bytes).
MAX_MEMORY = 4 << 30
#: Quasi-Monte Carlo points for the same-neuron moments over 3-4 distinct inputs (see four_point).
QMC_POINTS = 1 << 14


class FourPointStatistics(NamedTuple):
    """The leading four-point statistics of the output layer, for inputs a1..a4 (note §2.0).

    ``nngp`` (N, N) is K and ``ntk`` (N, N) is Theta (infinite width). The five others are
    (N, N, N, N) float64, in the normalization of Roberts, Yaida & Hanin (the note §2.0), for
    hidden width n, output neurons i, and :math:`\\Delta X = X - \\mathbb E X`:

    * ``V[a1, a2, a3, a4]`` :math:`= V_{(a_1a_2)(a_3a_4)}`, the four-point vertex:
      :math:`\\mathrm{Cov}(\\hat G_{a_1a_2}, \\hat G_{a_3a_4}) = V/n`, i.e. the connected
      :math:`\\mathbb E[z_{i_1;a_1}\\cdots z_{i_4;a_4}] = (\\delta_{i_1i_2}\\delta_{i_3i_4}
      V_{(a_1a_2)(a_3a_4)} + \\delta_{i_1i_3}\\delta_{i_2i_4} V_{(a_1a_3)(a_2a_4)}
      + \\delta_{i_1i_4}\\delta_{i_2i_3} V_{(a_1a_4)(a_2a_3)})/n`.
    * ``A[a1, a2, a3, a4]`` :math:`= A_{(a_1a_2)(a_3a_4)}` and ``B[a1, a2, a3, a4]``
      :math:`= B_{a_1a_2a_3a_4}`, the NTK variance:
      :math:`\\mathbb E[\\Delta\\hat\\Theta_{i_1i_2;a_1a_2}\\Delta\\hat\\Theta_{i_3i_4;a_3a_4}]
      = (\\delta_{i_1i_2}\\delta_{i_3i_4} A_{(a_1a_2)(a_3a_4)}
      + \\delta_{i_1i_3}\\delta_{i_2i_4} B_{a_1a_3a_2a_4}
      + \\delta_{i_1i_4}\\delta_{i_2i_3} B_{a_1a_4a_2a_3})/n`; so
      :math:`B_{abcd} = n\\,\\mathbb E[\\hat\\Theta_{pq;ac}\\hat\\Theta_{pq;bd}]` for p != q.
    * ``D[a1, a2, a3, a4]`` :math:`= D_{(a_1a_2)(a_3a_4)}` and ``F[a1, a2, a3, a4]``
      :math:`= F_{a_1a_2a_3a_4}`, the NTK-preactivation cross-correlation:
      :math:`\\mathbb E[z_{i_1;a_1} z_{i_2;a_2}\\Delta\\hat\\Theta_{i_3i_4;a_3a_4}]
      = (\\delta_{i_1i_2}\\delta_{i_3i_4} D_{(a_1a_2)(a_3a_4)}
      + \\delta_{i_1i_3}\\delta_{i_2i_4} F_{a_1a_3a_2a_4}
      + \\delta_{i_1i_4}\\delta_{i_2i_3} F_{a_1a_4a_2a_3})/n`; so
      :math:`F_{abcd} = n\\,\\mathbb E[z_{p;a} z_{q;c}\\hat\\Theta_{pq;bd}]` for p != q.

    Symmetries: V and A are symmetric within each pair and under pair exchange; D within each
    pair only; :math:`B_{abcd} = B_{badc} = B_{cdab}`; :math:`F_{abcd} = F_{cdab}`. One input:
    ``V[0,0,0,0]`` is V, the variance of one output's NTK is ``(A + 2 B)/n`` and
    ``Cov(z_i^2, Theta_kk) = D/n`` (i != k).
    """

    nngp: torch.Tensor
    ntk: torch.Tensor
    V: torch.Tensor
    D: torch.Tensor
    F: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor


def four_point(
    net, x: torch.Tensor, *, width: int | None = None, quadrature_points: int = QMC_POINTS, seed: int = 0,
    max_memory: int = MAX_MEMORY,
) -> FourPointStatistics:
    """The four-point vertex V, the NTK variance A, B and the NTK-preactivation correlators D, F.

    All N inputs at once: O(L N^4) time and memory. For each weight layer (note §2.1-2.2; the
    recursions of RYH §4.3 (V) and §8.3 (A, B, D, F), re-derived in the pair-variable form of
    the note, which needs no :math:`K^{-1}`; equation numbers were not checked against the book),
    with :math:`g_p = \\langle\\sigma_a\\sigma_b\\rangle_K`, :math:`g'_p = \\langle\\sigma'_a\\sigma'_b
    \\rangle_K` for the pair p = (a, b), u over its pair variables (aa, ab, bb), and the same-neuron
    moments :math:`M_{pq} = \\langle\\sigma_a\\sigma_b\\sigma_c\\sigma_d\\rangle - g_pg_q`,
    :math:`M^{\\times}_{pq} = \\langle\\sigma_a\\sigma_b\\sigma'_c\\sigma'_d\\rangle - g_pg'_q`,
    :math:`M'_{pq} = \\langle\\sigma'_a\\sigma'_b\\sigma'_c\\sigma'_d\\rangle - g'_pg'_q`:

    .. math::
        V' &= C_W^2 (M + J V J^\\top), \\qquad (J V)_{pq} = \\textstyle\\sum_u \\partial_u g_p V_{uq},\\\\
        D' &= C_W\\lambda_W (M + J V J^\\top) + C_W^2 (M^{\\times}\\Theta_q + X),\\quad
        X = J V J'^\\top \\Theta_q + J D\\, g'_q,\\\\
        A' &= \\lambda_W^2 (M + J V J^\\top) + \\lambda_W C_W (M^\\times\\Theta_q
            + M^{\\times\\top}\\Theta_p + X + X^\\top) + C_W^2 (M'\\Theta_p\\Theta_q + Y),\\\\
        Y &= J' V J'^\\top \\Theta_p\\Theta_q + \\Theta_p (J' D) g'_q
            + g'_p (J' D)^\\top \\Theta_q + g'_p g'_q A,\\\\
        B'_{abcd} &= C_W^2 (\\langle\\sigma'_a\\sigma'_b\\sigma'_c\\sigma'_d\\rangle
            \\Theta_{ac}\\Theta_{bd} + g'_{ab} g'_{cd} B_{abcd}),\\\\
        F'_{abcd} &= C_W^2 \\big(\\langle\\sigma_a\\sigma'_b\\sigma_c\\sigma'_d\\rangle\\Theta_{bd}
            + \\textstyle\\sum_{\\beta\\in\\{a,b\\},\\gamma\\in\\{c,d\\}}
            \\langle\\partial_\\beta(\\sigma_a\\sigma'_b)\\rangle
            \\langle\\partial_\\gamma(\\sigma_c\\sigma'_d)\\rangle F_{\\beta b\\gamma d}\\big),

    starting from zero at layer 1 (exactly Gaussian), with :math:`J'` the same for :math:`g'`.
    The entries over two samples a, b are exactly those of the pair recursions behind
    :func:`corrections` (the note's sample-set closure).

    Accuracy. Gaussian integrals over <= 2 distinct inputs are exact to round-off (closed forms,
    or the 2-D rule of :func:`corrections`, 1e-12), so every entry over <= 2 distinct inputs is
    too. The same-neuron moments over 3 or 4 distinct inputs (e.g.
    :math:`\\langle\\sigma_a\\sigma_b\\sigma_c\\sigma_d\\rangle`) are 3-D / 4-D integrals with no
    closed form: they are estimated by scrambled-Sobol quasi-Monte Carlo with
    ``quadrature_points`` points over all N inputs (deterministic for a given ``seed``), in
    connected form with the delta-method control variate (``_moments._set_moments``). That
    error is NOT round-off: measured against 2^18 points (N = 5 and 8 inputs, L = 4), the
    largest error of each of V, A, B, D, F at the default 2^14 points was 1e-4 to 2e-3 of the
    tensor's largest entry for ReLU, and 1e-4 to 5e-3 for tanh (C_W = 1 and 2); 4x more
    points divide it by about 3.

    Cost: per layer, the pair problems of :func:`corrections`, three (P x R) @ (R x P)
    products (P = N(N+1)/2 pairs, R points) and O(N^4) elementwise work; memory about
    ``80 N^4`` bytes (float64), checked against ``max_memory``. Duplicate inputs are computed
    once.

    Parameters
    ----------
    net : Serial or MLPSpec
        ``serial(Dense, act, ..., Dense)`` (see :func:`read_mlp`) or an :class:`MLPSpec`.
    x : Tensor (N, d)
    width : int, optional
        The hidden width n; it only enters the standard parameterization's
        :math:`\\lambda_W = n`. Default: the network's own.
    quadrature_points : int
        Quasi-Monte Carlo points R for the moments over 3-4 distinct inputs (default 2^14).
    seed : int
        Scrambling seed of the Sobol points.
    max_memory : int
        Bytes the tensors may take (default 4 GiB); a larger problem raises NtkitError.

    Returns
    -------
    FourPointStatistics

    References
    ----------
    D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*, CUP 2022,
    §4.3 (V) and §8.3 (A, B, D, F). S. Yaida, arXiv:1910.00019.
    """
    x = check_points(x, "x")
    spec = read_mlp(net, None if width is None else check_width(width), x.shape[1])
    unique, inverse = torch.unique(x, dim=0, return_inverse=True)
    if isinstance(quadrature_points, bool) or not isinstance(quadrature_points, int) or quadrature_points < 2:
        raise NtkitError(f"quadrature_points must be an integer >= 2, got {quadrature_points!r}")
    needed = _memory(unique.shape[0], quadrature_points) + 5 * 8 * x.shape[0] ** 4
    if needed > max_memory:
        raise NtkitError(
            f"four_point for N = {x.shape[0]} inputs ({unique.shape[0]} distinct) needs about "
            f"{needed / 2**30:.1f} GiB (it grows like N^4), over max_memory = {max_memory / 2**30:.1f} GiB; "
            "pass fewer inputs, a larger max_memory, or use four_point_subset for <= 4 inputs"
        )
    stats = _propagate(spec, unique, quadrature_points, seed)
    return _expand(stats, inverse)


def four_point_subset(
    net, x: torch.Tensor, indices, *, width: int | None = None, quadrature_points: int = 1 << 18, seed: int = 0
) -> FourPointStatistics:
    """V, D, F, A, B restricted to <= 4 inputs ``x[indices]``, at O(L) cost.

    By the sample-set closure (note §2.0) the recursion of an entry uses only entries over
    subsets of its own inputs, so this is the ``indices`` slice of ``four_point(net, x)``:
    exactly (to round-off and the 2-D rule's 1e-12) for entries over <= 2 distinct inputs; for
    entries over 3-4 distinct inputs both are quasi-Monte Carlo estimates of the same numbers
    (see :func:`four_point`), here with 2^18 points by default (about 10x less error than
    :func:`four_point`'s 2^14), since only k <= 4 inputs are integrated.

    Returns a :class:`FourPointStatistics` with k = len(indices) inputs: (k, k) and (k, k, k, k).

    Examples
    --------
    >>> s = four_point_subset(net, x, [0, 3, 7, 9])     # s.V: (4, 4, 4, 4)
    >>> s.V[0, 1, 2, 3]                                  # V_{(x0 x3)(x7 x9)}
    """
    x = check_points(x, "x")
    chosen = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if chosen.numel() < 1 or chosen.numel() > 4:
        raise NtkitError(f"four_point_subset takes 1 to 4 indices, got {chosen.numel()}; use four_point for more")
    if bool(((chosen < -x.shape[0]) | (chosen >= x.shape[0])).any()):
        raise NtkitError(f"four_point_subset: indices {chosen.tolist()} out of range for {x.shape[0]} inputs")
    spec = read_mlp(net, None if width is None else check_width(width), x.shape[1])
    return four_point(spec, x[chosen], quadrature_points=quadrature_points, seed=seed)


def _memory(n: int, points: int) -> int:
    """Bytes of the engine's tensors: ~14 packed (P x P), ~8 (N^4) and ~4 (R x P) float64 arrays."""
    pairs = n * (n + 1) // 2
    return 8 * (14 * pairs**2 + 8 * n**4 + (4 * min(points, QMC_CHUNK) * pairs if n >= 3 else 0))


def _propagate(spec, x: torch.Tensor, points: int, seed: int) -> dict:
    n = x.shape[0]
    q = x @ x.T / x.shape[1]
    rows, cols, index = pair_layout(n)
    _check_variances(spec, q.diagonal())
    pairs = rows.shape[0]
    k = spec.c_b[0] + spec.c_w[0] * q
    theta = spec.lambda_b[0] + spec.lambda_w[0] * q
    s = {name: q.new_zeros(pairs, pairs) for name in ("V", "D", "A")}
    s.update({name: q.new_zeros(n, n, n, n) for name in ("B", "F")})
    for layer, act in enumerate(spec.activations):
        c_w, c_b = spec.c_w[layer + 1], spec.c_b[layer + 1]
        l_w, l_b = spec.lambda_w[layer + 1], spec.lambda_b[layer + 1]
        m = layer_moments(act, k, points, seed + layer)
        s = _layer(m, s, theta, theta[rows, cols], index, c_w, l_w)
        g, gp = m["g"][index], m["gp"][index]  # (N, N) from the packed pairs
        k, theta = c_b + c_w * g, l_b + l_w * g + c_w * gp * theta
    s["K"], s["T"], s["index"] = k, theta, index
    return s


def _layer(m: dict, s: dict, theta: torch.Tensor, t: torch.Tensor, index, c_w: float, l_w: float) -> dict:
    """One hidden layer and the next Dense (see four_point); ``t`` is Theta per pair (P,)."""
    g, gp, slots = m["g"], m["gp"], m["slots"]
    v, d, a = s["V"], s["D"], s["A"]
    conn = m["m4"] - g[:, None] * g[None, :]
    mixed = m["mmix"] - g[:, None] * gp[None, :]
    connp = m["mp4"] - gp[:, None] * gp[None, :]
    jv, jpv = left(m["jac"], slots, v), left(m["jacp"], slots, v)
    jvj, jvjp, jpvjp = right(jv, m["jac"], slots), right(jv, m["jacp"], slots), right(jpv, m["jacp"], slots)
    jd, jpd = left(m["jac"], slots, d), left(m["jacp"], slots, d)
    x = jvjp * t[None, :] + jd * gp[None, :]
    y = (
        jpvjp * (t[:, None] * t[None, :]) + t[:, None] * jpd * gp[None, :] + gp[:, None] * jpd.T * t[None, :]
        + gp[:, None] * gp[None, :] * a
    )
    forward = conn + jvj
    new = {
        "V": c_w**2 * forward,
        "D": c_w * l_w * forward + c_w**2 * (mixed * t[None, :] + x),
        "A": l_w**2 * forward + l_w * c_w * (mixed * t[None, :] + mixed.T * t[:, None] + x + x.T)
        + c_w**2 * (connp * (t[:, None] * t[None, :]) + y),
    }
    same_b = m["mp4"][index[:, :, None, None], index[None, None, :, :]]  # <s'_a s'_b s'_c s'_d>
    gp_full = gp[index]
    new["B"] = c_w**2 * (same_b * theta[:, None, :, None] * theta[None, :, None, :]
                         + gp_full[:, :, None, None] * gp_full[None, None, :, :] * s["B"])
    same_f = m["mmix"][index[:, None, :, None], index[None, :, None, :]]  # <s_a s'_b s_c s'_d>
    new["F"] = c_w**2 * (same_f * theta[None, :, None, :] + _stein(m["stein_a"], m["stein_b"], s["F"]))
    return new


def _stein(e_a, e_b, f):
    """sum_{beta in {a,b}, gamma in {c,d}} E[a,b,beta] E[c,d,gamma] F[beta, b, gamma, d]."""
    n = f.shape[0]
    diagonal = torch.arange(n)
    half = e_a[:, :, None, None] * f + e_b[:, :, None, None] * f[diagonal, diagonal][None]
    return e_a[None, None] * half + e_b[None, None] * half[:, :, diagonal, diagonal][:, :, None, :]


def _expand(s: dict, inverse: torch.Tensor) -> FourPointStatistics:
    index = s["index"]
    i = inverse
    out = {"nngp": s["K"][i[:, None], i[None, :]], "ntk": s["T"][i[:, None], i[None, :]]}
    four = (i[:, None, None, None], i[None, :, None, None], i[None, None, :, None], i[None, None, None, :])
    pair_left, pair_right = index[four[0], four[1]], index[four[2], four[3]]
    for name in ("V", "D", "A"):
        out[name] = s[name][pair_left, pair_right]
    for name in ("B", "F"):
        out[name] = s[name][four]
    return FourPointStatistics(**out)
