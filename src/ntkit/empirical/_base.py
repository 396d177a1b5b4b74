"""What every empirical-NTK implementation provides, and the shared Jacobian contraction.

An implementation computes the NTK block of two chunks of examples in two steps:
``features(params, x)`` computes what it needs of one chunk (per-example Jacobians, layer
inputs and cotangents, or just the inputs), and ``contract(f1, f2)`` turns two chunks' features
into the block ``(n1, n2, Dg, K, K)`` (see ``_axes``). The driver computes each chunk's features
once per row of blocks, and ``monte_carlo_kernel`` runs the same two steps under ``vmap`` over
copies of a network, which is why ``params`` is an argument and not read from the model.
"""

from __future__ import annotations

import torch

from ._problem import Problem
from ._structure import Structure


class Implementation:
    """Base class: see the module docstring. ``name`` is the key in ``IMPLEMENTATIONS``."""

    name = ""

    def __init__(self, problem: Problem, structure: Structure, memory_budget: float):
        self.problem, self.structure, self.memory_budget = problem, structure, memory_budget
        self.axes = problem.axes

    def features(self, params: dict[str, torch.Tensor], x: torch.Tensor):
        raise NotImplementedError

    def contract(self, f1, f2, diagonal: bool = False) -> torch.Tensor:
        """``(n1, n2, Dg, K, K)`` averaged over the traced units; ``(n, Dg, K, K)`` when diagonal."""
        raise NotImplementedError

    def bytes_per_example(self) -> float:
        """Approximate working memory per example of a chunk."""
        raise NotImplementedError

    def bytes_kept_per_example(self) -> float:
        """Memory per example of a chunk's features once computed (kept for later blocks)."""
        return self.bytes_per_example()

    @classmethod
    def cost(cls, problem: Problem, structure: Structure, n1: int, n2: int) -> float:
        """Approximate floating-point operations for an (n1, n2) kernel (the ``auto`` rule)."""
        raise NotImplementedError

    @staticmethod
    def available(problem: Problem, structure: Structure) -> str:
        """Empty when the implementation applies to ``problem``, else the reason it does not."""
        return ""

    # shared helpers ----------------------------------------------------------------------------

    def _backward_memory(self) -> float:
        """Forward activations kept for the backward pass, and O cotangents at the widest layers."""
        s, o = self.structure, self.axes.n_outputs
        return 3 * s.activations + 2 * o * s.widest


def contract_jacobians(j1: torch.Tensor, j2: torch.Tensor, diagonal: bool = False) -> torch.Tensor:
    """:math:`\\sum_{t,p} J_1[i, d, k, t, p] J_2[j, d, k', t, p]` for Jacobians ``(n, Dg, K, T, P)``.

    Returns ``(n1, n2, Dg, K, K)``, or ``(n, Dg, K, K)`` for the pairs ``(i, i)`` when diagonal;
    summed, not yet averaged, over the traced units ``t``.
    """
    if diagonal:
        return torch.einsum("idktp,idstp->idks", j1, j2)
    n1, d, k, t, p = j1.shape
    if d == 1 and k == 1:  # traced outputs only: one matrix product over (t, p)
        return (j1.reshape(n1, t * p) @ j2.reshape(j2.shape[0], t * p).T).reshape(n1, -1, 1, 1, 1)
    return torch.einsum("idktp,jdstp->ijdks", j1, j2)
