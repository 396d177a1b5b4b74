"""The O(1/n) recursions of RYH ch. 4 and ch. 8, restricted to one pair of samples.

By the note's sample-set closure (§2.0), the mean corrections K^1_ab and Theta^1_ab need
only the statistics indexed by subsets of {a, b}: per pair, the pair-variable vectors K, Theta,
K^1, Theta^1 (3 slots: aa, ab, bb), the 3x3 tensors V (four-point vertex) and D
(Cov(G, H) * n) and the 2x2x2x2 tensor F (same-neuron NTK-preactivation correlator). All pairs
of a batch go through the layers together: O(L * P) work and memory for P pairs.

Inside, the state is pair-last ((3, P), (3, 3, P), (2, 2, 2, 2, P)) and each layer is a few
dozen whole-batch tensor operations (:func:`_advance`); the Gaussian statistics come from
:func:`~ntkit.finite_width._pair_moments.pair_moments` (closed forms for the ReLU family and
Erf). ``pair_statistics`` returns the documented pair-first layout.
"""

from __future__ import annotations

import torch

from .. import _compiled
from ..layers.rectified import ABReLU
from ._architecture import MLPSpec
from ._expectations import PairGaussian
from ._pair_moments import PairMoments, from_gaussian, pair_moments

#: The two samples of each slot: aa, ab, bb.
SLOTS = ((0, 0), (0, 1), (1, 1))
_NAMES = ("K", "T", "K1", "T1", "V", "D", "F")
#: F[a, b, c, d]: its same-neuron moment is md[a + c, b + d], and it multiplies Theta[b + d].


def pair_statistics(spec: MLPSpec, q: torch.Tensor, same: torch.Tensor) -> dict:
    """Propagate one batch of pairs through all layers.

    ``q`` (P, 3): the input products x_a.x_a/n0, x_a.x_b/n0, x_b.x_b/n0; ``same`` (P,) marks
    identical samples. Returns the output layer's ``K, T, K1, T1`` (P, 3), ``V, D`` (P, 3, 3)
    and ``F`` (P, 2, 2, 2, 2), with (equal hidden widths n; RYH §4.1, §8.1: layer 1 is exactly
    Gaussian, so V = K1 = D = F = T1 = 0 there)

    .. math::
        \\mathbb E[\\hat G_u] = K_u + K^1_u / n,\\quad
        \\mathrm{Cov}(\\hat G_u, \\hat G_v) = V_{uv}/n,\\quad
        \\mathbb E[\\hat\\Theta_{ii;u}] = \\Theta_u + \\Theta^1_u/n,\\quad
        \\mathrm{Cov}(\\hat G_u, \\hat H_v) = D_{uv}/n,

    and ``F[a, b, c, d] = n E[z_{p;a} z_{q;c} Theta_{pq;bd}]`` (p != q).
    """
    return _pair_first(propagate(spec, q, same))


def propagate(spec: MLPSpec, q: torch.Tensor, same: torch.Tensor) -> dict:
    """:func:`pair_statistics` in the pair-last layout: ``K, T, K1, T1`` (3, P), ``V, D`` (3, 3, P),
    ``F`` (2, 2, 2, 2, P); ``q`` is (P, 3) as there.

    ReLU-family networks on float64 CPU tensors take the compiled loop of ``_compiled_pairs``
    when Numba is available (:func:`ntkit._compiled.enabled`); everything else, and the
    reference for it, is :func:`torch_propagate`.
    """
    if _takes_compiled_loop(spec, q):
        from . import _compiled_pairs

        return _compiled_pairs.propagate(spec, q, same)
    return torch_propagate(spec, q, same)


def cross_statistics(spec: MLPSpec, q: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """The output layer's K, Theta, K^1, Theta^1 of each pair's two samples (the ab slot), (4, P):
    what ``corrections`` needs, and all that the compiled loop then writes."""
    if _takes_compiled_loop(spec, q):
        from . import _compiled_pairs

        return _compiled_pairs.propagate(spec, q, same, cross_only=True)
    state = torch_propagate(spec, q, same)
    return torch.stack([state[name][1] for name in ("K", "T", "K1", "T1")])


def _takes_compiled_loop(spec: MLPSpec, q: torch.Tensor) -> bool:
    """ReLU-family networks on float64 CPU tensors, where Numba is available."""
    return q.dtype == torch.float64 and _compiled.enabled(q) and all(isinstance(act, ABReLU) for act in spec.activations)


def torch_propagate(spec: MLPSpec, q: torch.Tensor, same: torch.Tensor) -> dict:
    """:func:`propagate` as whole-batch torch operations (any activation, any device)."""
    p, k = q.shape[0], q.T.contiguous()
    state = {
        "K": spec.c_b[0] + spec.c_w[0] * k, "T": spec.lambda_b[0] + spec.lambda_w[0] * k,
        "K1": q.new_zeros(3, p), "T1": q.new_zeros(3, p),
        "V": q.new_zeros(3, 3, p), "D": q.new_zeros(3, 3, p), "F": q.new_zeros(2, 2, 2, 2, p),
    }
    for layer, act in enumerate(spec.activations):
        coefficients = (spec.c_w[layer + 1], spec.c_b[layer + 1], spec.lambda_w[layer + 1], spec.lambda_b[layer + 1])
        state = _advance(pair_moments(act, state["K"], same), state, *coefficients)
    return state


def _pair_last(s: dict) -> dict:
    return {name: s[name].permute(*range(1, s[name].dim()), 0).contiguous() for name in _NAMES}


def _pair_first(s: dict) -> dict:
    return {name: s[name].permute(s[name].dim() - 1, *range(s[name].dim() - 1)).contiguous() for name in _NAMES}


def _layer(gauss: PairGaussian, s: dict, c_w: float, c_b: float, l_w: float, l_b: float) -> dict:
    """One hidden layer and the next Dense from a :class:`PairGaussian`, pair-first in and out.

    See :func:`_advance`."""
    return _pair_first(_advance(from_gaussian(gauss), _pair_last(s), c_w, c_b, l_w, l_b))


def _advance(m: PairMoments, s: dict, c_w: float, c_b: float, l_w: float, l_b: float) -> dict:
    """One hidden layer and the next Dense: the recursions of the note §2.1-2.2, pair-last.

    V: RYH §4.3; K^1: RYH §4.5; D, F and Theta^1: RYH §8.3; all re-derived in the
    derivative (pair-variable) form of the note, which needs no K^{-1}. With J, Jp the
    Jacobians of g, gp in the pair variables and H, Hp their Hessians:

    * ``V' = C_W^2 N``, ``N = m4 - g g^T + J V J^T`` (symmetric),
    * ``D' = C_W l_W N + C_W^2 [(md - g gp^T + J V Jp^T) Theta + J D gp]`` (Theta, gp per column),
    * ``K1' = C_W s``, ``s_w = J_w K1 + 1/2 sum_uv H_wuv V_uv`` (``s'`` with Jp, Hp),
    * ``T1' = l_W s + C_W [s' Theta + gp T1 + sum_u Jp_wu D_uw + (F term)]``,
    * ``F'_abcd = C_W^2 [md[a+c, b+d] Theta_{b+d} + sum_ij E_abi E_cdj F_ibjd]`` (E: Stein weights).

    The rows of J, H for the diagonal slots aa, bb have one entry (their own variance); V, N
    and F are symmetric (``F_abcd = F_cdab``). Every line below is a whole-batch operation on
    (P,), (3, P) or (3, 3, P) tensors: about 200 per layer, whatever P.
    """
    v, d, f, theta, k1, t1 = s["V"], s["D"], s["F"], s["T"], s["K1"], s["T1"]
    g, gp = m.g, m.gp
    (j0, j2), r, (p0, p2), rp = m.jac_self, m.jac_ab, m.jacp_self, m.jacp_ab
    cw2 = c_w * c_w
    # (J V)[1, x] = sum_u r_u V[u, x], and the J V J^T, J V Jp^T it feeds
    a = r[0] * v[0] + r[1] * v[1] + r[2] * v[2]  # (3, P): a_x
    n00 = m.m4[0] - g[0] * g[0] + j0 * j0 * v[0, 0]
    n01 = m.m4[1] - g[0] * g[1] + j0 * a[0]
    n02 = m.m4[2] - g[0] * g[2] + j0 * j2 * v[0, 2]
    n11 = m.m4[2] - g[1] * g[1] + (r * a).sum(0)
    n12 = m.m4[3] - g[1] * g[2] + j2 * a[2]
    n22 = m.m4[4] - g[2] * g[2] + j2 * j2 * v[2, 2]
    n = torch.stack([n00, n01, n02, n01, n11, n12, n02, n12, n22]).reshape(3, 3, -1)
    jvjp = torch.stack([
        j0 * torch.stack([v[0, 0] * p0, (v[0] * rp).sum(0), v[0, 2] * p2]),
        torch.stack([a[0] * p0, (a * rp).sum(0), a[2] * p2]),
        j2 * torch.stack([v[2, 0] * p0, (v[2] * rp).sum(0), v[2, 2] * p2]),
    ])
    jd = torch.stack([j0 * d[0], r[0] * d[0] + r[1] * d[1] + r[2] * d[2], j2 * d[2]])
    gp_theta = gp * theta
    same_neuron = (m.md * theta).mul_(cw2)  # C_W^2 <s s s' s'> Theta, shared by D and F
    d_new = torch.add(same_neuron, n, alpha=c_w * l_w)
    d_new += ((jvjp * theta).addcmul_(jd, gp).sub_(g[:, None] * gp_theta[None])).mul_(cw2)
    shift = _shift(j0, r, j2, m.hess_self, m.hess_ab, k1, v)
    shift_p = _shift(p0, rp, p2, m.hessp_self, m.hessp_ab, k1, v)
    jpd = torch.stack([p0 * d[0, 0], (rp * d[:, 1]).sum(0), p2 * d[2, 2]])  # sum_u Jp[w, u] D[u, w]
    t1_new = l_w * shift + c_w * (shift_p * theta + gp * t1 + jpd + _f_term_pairs(f, p0, rp, p2))
    return {
        "K": c_b + c_w * g,
        "T": l_b + l_w * g + c_w * gp_theta,
        "K1": c_w * shift, "T1": t1_new, "V": cw2 * n, "D": d_new,
        "F": _f_advance(m, f, same_neuron, c_w),
    }


def _shift(j0, r, j2, hess_self, hess_ab, k1, v):
    """``J K1 + 1/2 sum_uv H[w, u, v] V[u, v]`` per slot w (3, P)."""
    return torch.stack([
        j0 * k1[0] + 0.5 * hess_self[0] * v[0, 0],
        (r * k1).sum(0) + 0.5 * (hess_ab * v).sum((0, 1)),
        j2 * k1[2] + 0.5 * hess_self[1] * v[2, 2],
    ])


def _f_term_pairs(f, p0, rp, p2):
    """Theta^1's F term (see :func:`_f_term`) with the sparse Jacobian rows, pair-last."""
    cross = (f[0, 0, 0, 1] + f[0, 1, 0, 0]) * rp[0] + (f[0, 0, 1, 1] + f[0, 1, 1, 0]) * rp[1]
    cross = cross + (f[1, 0, 1, 1] + f[1, 1, 1, 0]) * rp[2]
    return torch.stack([2 * f[0, 0, 0, 0] * p0, cross, 2 * f[1, 1, 1, 1] * p2])


def _f_advance(m: PairMoments, f, same_neuron, c_w):
    """``F'_abcd = C_W^2 [<s_a s'_b s_c s'_d> Theta_bd + sum_ij E[a,b,i] E[c,d,j] F_ibjd]``, pair-last.

    ``same_neuron[w, u]`` is ``C_W^2 md[w, u] Theta_u`` (``<s_a s'_b s_c s'_d> = md[a + c, b + d]``).
    For fixed (b, d) the sum is the 2x2 product ``M_b F_(.b.d) M_d^T`` with ``M_b[a, i] = C_W E[a, b, i]``
    (three non-zero entries each); the (1, 0) block is the transpose of the (0, 1) block.
    """
    j0, j2 = m.jac_self * c_w
    gp1 = m.gp[1] * c_w
    # <sigma_i sigma''_j> = 2 dg_ab/dK_jj; for identical samples <sigma sigma''> = dg - <sigma'^2>
    e011 = torch.where(m.same, j0 - gp1, (2 * c_w) * m.jac_ab[2])
    e100 = torch.where(m.same, j0 - gp1, (2 * c_w) * m.jac_ab[0])
    stein = ([[j0, None], [e100, gp1]], [[gp1, e011], [None, j2]])  # C_W M_b[a][i]
    blocks = {(b, dd): _sandwich(stein[b], f[:, b, :, dd], stein[dd]) for b, dd in ((0, 0), (0, 1), (1, 1))}
    blocks[1, 0] = [[blocks[0, 1][c][a] for c in range(2)] for a in range(2)]
    entries = [
        blocks[b, dd][a][c] + same_neuron[a + c, b + dd]
        for a in range(2) for b in range(2) for c in range(2) for dd in range(2)
    ]
    return torch.stack(entries).reshape(f.shape)


def _sandwich(left, block, right):
    """``(L B R^T)[a][c]`` for 2x2 ``L, R`` (lists; None is zero) and ``B`` (2, 2, P)."""
    half = [[_dot([left[a][0], left[a][1]], [block[0, j], block[1, j]]) for j in range(2)] for a in range(2)]
    return [[_dot(half[a], right[c]) for c in range(2)] for a in range(2)]


def _dot(left, right):
    terms = [x * y for x, y in zip(left, right) if x is not None and y is not None]
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _four_point(gauss: PairGaussian, first: tuple, second: tuple) -> torch.Tensor:
    """``<sigma^(o1)_i sigma^(o1)_j sigma^(o2)_k sigma^(o2)_l>`` for slots (ij), (kl): (P, 3, 3)."""
    p = gauss.k.shape[0]
    out = gauss.k.new_zeros(p, 3, 3)
    for w, (i, j) in enumerate(SLOTS):
        for u, (k, l) in enumerate(SLOTS):
            out[:, w, u] = gauss.expect(((i, first[0]), (j, first[1]), (k, second[0]), (l, second[1])))
    return out


def _f_update(gauss: PairGaussian, f: torch.Tensor, theta: torch.Tensor, c_w: float) -> torch.Tensor:
    """F'_{abcd} = C_W^2 <s_a s'_b s_c s'_d> Theta_bd + C_W^2 sum E1[a,b,beta] E1[c,d,gamma] F_{beta b gamma d}."""
    e1 = gauss.stein()
    out = torch.empty_like(f)
    for a in range(2):
        for b in range(2):
            for c in range(2):
                for dd in range(2):
                    same_neuron = gauss.expect(((a, 0), (b, 1), (c, 0), (dd, 1))) * theta[:, b + dd]
                    lower = torch.einsum("pi,pj,pij->p", e1[:, a, b], e1[:, c, dd], f[:, :, b, :, dd])
                    out[:, a, b, c, dd] = c_w**2 * (same_neuron + lower)
    return out


def _f_term(f: torch.Tensor, jacp: torch.Tensor) -> torch.Tensor:
    """Theta^1's F term: 1/2 sum_{beta,gamma} (F_{beta i gamma j} + F_{beta j gamma i}) <d_beta d_gamma (s'_i s'_j)>.

    By Price's theorem <d_a d_a (s'_i s'_j)> = 2 dgp/dK_aa and <d_a d_b ...> = dgp/dK_ab, so in
    pair variables it is 2 Fs_aa dgp/dK_aa + 2 Fs_bb dgp/dK_bb + 2 Fs_ab dgp/dK_ab with
    Fs_{beta gamma} = (F_{beta i gamma j} + F_{beta j gamma i}) / 2 (note §2.2).
    """
    out = torch.zeros_like(jacp[:, :, 0])
    for w, (i, j) in enumerate(SLOTS):
        for beta, gamma in SLOTS:
            sym = 0.5 * (f[:, beta, i, gamma, j] + f[:, beta, j, gamma, i])
            out[:, w] += 2 * sym * jacp[:, w, beta + gamma]
    return out
