"""The O(1/n) recursions of RYH ch. 4 and ch. 8, restricted to one pair of samples.

By the note's sample-set closure (§2.0), the mean corrections K^1_ab and Theta^1_ab need
only the statistics indexed by subsets of {a, b}: per pair, the pair-variable vectors K, Theta,
K^1, Theta^1 (3 slots: aa, ab, bb), the 3x3 tensors V (four-point vertex) and D
(Cov(G, H) * n) and the 2x2x2x2 tensor F (same-neuron NTK-preactivation correlator). All pairs
of a batch go through the layers together: O(L * P) work and memory for P pairs.
"""

from __future__ import annotations

import torch

from ._architecture import MLPSpec
from ._expectations import PairGaussian

#: The two samples of each slot: aa, ab, bb.
SLOTS = ((0, 0), (0, 1), (1, 1))


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
    p = q.shape[0]
    state = {
        "K": spec.c_b[0] + spec.c_w[0] * q,
        "T": spec.lambda_b[0] + spec.lambda_w[0] * q,
        "K1": q.new_zeros(p, 3), "T1": q.new_zeros(p, 3),
        "V": q.new_zeros(p, 3, 3), "D": q.new_zeros(p, 3, 3), "F": q.new_zeros(p, 2, 2, 2, 2),
    }
    for layer, act in enumerate(spec.activations):
        coefficients = (spec.c_w[layer + 1], spec.c_b[layer + 1], spec.lambda_w[layer + 1], spec.lambda_b[layer + 1])
        state = _layer(PairGaussian(act, state["K"], same), state, *coefficients)
    return state


def _layer(gauss: PairGaussian, s: dict, c_w: float, c_b: float, l_w: float, l_b: float) -> dict:
    """One hidden layer and the next Dense: the recursions of the note §2.1-2.2.

    V: RYH §4.3; K^1: RYH §4.5; D, F and Theta^1: RYH §8.3; all re-derived in the
    derivative (pair-variable) form of the note, which
    needs no K^{-1}.
    """
    g, gp, jac, jacp, hess, hessp = gauss.g, gauss.gp, gauss.jac, gauss.jacp, gauss.hess, gauss.hessp
    k1, t1, v, d, f, theta = s["K1"], s["T1"], s["V"], s["D"], s["F"], s["T"]
    m4 = _four_point(gauss, (0, 0), (0, 0))  # <sigma sigma sigma sigma>
    md = _four_point(gauss, (0, 0), (1, 1))  # <sigma sigma sigma' sigma'>
    connected = m4 - g[:, :, None] * g[:, None, :]
    mixed = (md - g[:, :, None] * gp[:, None, :]) * theta[:, None, :]
    collective = torch.einsum("pwu,pux,pvx->pwv", jac, v, jac)  # sum_uv dg_w/dK_u dg_v/dK_x V_ux
    # X_{w v} = sum_u dg_w/dK_u [ sum_x dgp_v/dK_x V_ux Theta_v + gp_v D_uv ]
    x = torch.einsum("pwu,pvx,pux->pwv", jac, jacp, v) * theta[:, None, :] + torch.einsum(
        "pwu,puv->pwv", jac, d
    ) * gp[:, None, :]
    v_new = c_w**2 * (connected + collective)
    d_new = c_w * l_w * (connected + collective) + c_w**2 * (mixed + x)
    shift = torch.einsum("pwu,pu->pw", jac, k1) + 0.5 * torch.einsum("pwuv,puv->pw", hess, v)
    shift_p = torch.einsum("pwu,pu->pw", jacp, k1) + 0.5 * torch.einsum("pwuv,puv->pw", hessp, v)
    k1_new = c_w * shift
    t1_new = l_w * shift + c_w * (
        shift_p * theta + gp * t1 + torch.einsum("pwu,puw->pw", jacp, d) + _f_term(f, jacp)
    )
    f_new = _f_update(gauss, f, theta, c_w)
    return {
        "K": c_b + c_w * g,
        "T": l_b + l_w * g + c_w * gp * theta,
        "K1": k1_new, "T1": t1_new, "V": v_new, "D": d_new, "F": f_new,
    }


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
