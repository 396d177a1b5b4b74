"""Everything one layer of the pair recursions needs from the Gaussian of one pair of samples.

For a pair (a, b) with pre-activation covariance ``K = (K_aa, K_ab, K_bb)`` (slots 0, 1, 2; the
slot of samples (i, j) is i + j) the O(1/n) recursions of ``_recursions`` use

* ``g_w = <sigma_i sigma_j>``, ``gp_w = <sigma'_i sigma'_j>``, their Jacobians ``jac[w, u]`` and
  Hessians ``hess[w, u, v]`` in the pair variables (as :class:`PairGaussian`);
* ``m4[w + u] = <sigma_i sigma_j sigma_k sigma_l>`` and ``md[w, u] = <sigma_i sigma_j sigma'_k sigma'_l>``
  for slots w = (i, j), u = (k, l). Every same-neuron term of V, D and F is one of these
  (``<sigma_a sigma'_b sigma_c sigma'_d> = md[a + c, b + d]``).

Three engines, one result type: the ReLU family in closed form (``_relu_pairs``), Erf by
tilting and a 1-D correlation integral (``_erf_pairs``), anything else by the quadrature rule of
:class:`~ntkit.finite_width._expectations.PairGaussian`. Layout: pair-last, (..., P), so that
the recursions address slots with contiguous (P,) rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..layers.erf import Erf
from ..layers.rectified import ABReLU
from . import _erf_pairs, _relu_pairs
from ._expectations import PairGaussian

#: (p, q, r, t): p sigma and r sigma' at sample a, q sigma and t sigma' at b. m4[w, u] depends
#: on w + u only (the five FOUR combos); md[w, u] is MIXED[3 w + u].
FOUR = tuple((4 - s, s, 0, 0) for s in range(5))
MIXED = tuple((2 - w, w, 2 - u, u) for w in range(3) for u in range(3))


class PairMoments(NamedTuple):
    """One layer's Gaussian statistics of P pairs, pair-last.

    ``g, gp`` (3, P) per slot. Derivatives in the pair variables (K_aa, K_ab, K_bb): the
    diagonal slots depend on their own variance only, so ``jac_self`` (2, P) holds
    dg_aa/dK_aa and dg_bb/dK_bb and ``hess_self`` (2, P) their second derivatives; the ab slot
    has ``jac_ab`` (3, P) and ``hess_ab`` (3, 3, P); the same for ``gp`` (``jacp_*``,
    ``hessp_*``). ``m4`` (5, P): ``<sigma_i sigma_j sigma_k sigma_l>`` by the slot sum
    ``(i + j) + (k + l)``; ``md`` (3, 3, P). ``same`` (P,) marks pairs of identical samples.
    """

    same: torch.Tensor
    g: torch.Tensor
    gp: torch.Tensor
    jac_self: torch.Tensor
    jac_ab: torch.Tensor
    hess_self: torch.Tensor
    hess_ab: torch.Tensor
    jacp_self: torch.Tensor
    jacp_ab: torch.Tensor
    hessp_self: torch.Tensor
    hessp_ab: torch.Tensor
    m4: torch.Tensor
    md: torch.Tensor


def pair_moments(act, k: torch.Tensor, same: torch.Tensor) -> PairMoments:
    """The statistics of ``sigma(z)``, ``z ~ N(0, [[K_aa, K_ab], [K_ab, K_bb]])``; ``k`` (3, P)."""
    if isinstance(act, ABReLU):
        values = _relu_pairs.products(act.a, act.b, k, FOUR + MIXED)
        return PairMoments(same, **_relu_pairs.kernel_derivatives(act.a, act.b, k, same), **_tables(values))
    if isinstance(act, Erf):
        values = _erf_pairs.products(act, k, FOUR + MIXED)
        return PairMoments(same, **_erf_pairs.kernel_derivatives(act, k, same), **_tables(values))
    return from_gaussian(PairGaussian(act, k.T.contiguous(), same))


def from_gaussian(gauss: PairGaussian) -> PairMoments:
    """The same statistics from a :class:`PairGaussian` (its ``expect`` for m4 and md)."""
    values = []
    for p, q, r, t in FOUR + MIXED:
        values.append(gauss.expect(((0, 0),) * p + ((1, 0),) * q + ((0, 1),) * r + ((1, 1),) * t))
    fields = {"g": _pair_last(gauss.g), "gp": _pair_last(gauss.gp)}
    for name, jac, hess in (("", gauss.jac, gauss.hess), ("p", gauss.jacp, gauss.hessp)):
        fields[f"jac{name}_self"] = torch.stack([jac[:, 0, 0], jac[:, 2, 2]])
        fields[f"jac{name}_ab"] = _pair_last(jac[:, 1])
        fields[f"hess{name}_self"] = torch.stack([hess[:, 0, 0, 0], hess[:, 2, 2, 2]])
        fields[f"hess{name}_ab"] = _pair_last(hess[:, 1])
    return PairMoments(gauss.same, **fields, **_tables(torch.stack(values)))


def _tables(values: torch.Tensor) -> dict:
    """m4 (5, P) and md (3, 3, P) from the FOUR + MIXED expectations (14, P)."""
    return {"m4": values[:5], "md": values[5:].reshape(3, 3, -1)}


def _pair_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(*range(1, t.dim()), 0).contiguous()
