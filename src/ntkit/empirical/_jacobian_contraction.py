"""``implementation="jacobian_contraction"``: form per-example Jacobians, then contract them.

The reference implementation: :math:`\\Theta = J_1 J_2^\\top` with :math:`J = \\partial f /
\\partial \\theta` computed by reverse-mode autodiff (``torch.func.jacrev``, one
vector-Jacobian product per output unit), one example at a time when the model treats
examples independently (under ``vmap`` where the model runs under it, else in a loop), else on
the whole chunk.

Cost (Novak et al. 2022, "Fast finite width neural tangent kernel", Table 1): ``N O`` backward
passes, :math:`N O\\,[\\mathrm{FP}]`, plus :math:`N_1 N_2 O^2 P` for the contraction (``O`` once
with traced outputs), and :math:`N O P` memory for the Jacobians. It wins when ``P`` is small
relative to the forward pass, e.g. convolutions with few parameters on large images.
"""

from __future__ import annotations

import torch
from torch.func import jacrev, vmap

from ._base import Implementation, contract_jacobians


class JacobianContraction(Implementation):
    name = "jacobian_contraction"

    def features(self, params, x):
        problem, axes = self.problem, self.axes
        if problem.per_example and problem.vmappable:
            jacobians = vmap(jacrev(problem.single), in_dims=(None, 0), randomness="different")(params, x)
        elif problem.per_example:  # one example at a time, but not under vmap (an LSTM, .item())
            each = [jacrev(problem.single)(params, example) for example in x]
            jacobians = {name: torch.stack([j[name] for j in each]) for name in params}
        else:
            jacobians = jacrev(problem.function)(params, x)
        return [axes.split(j) for j in jacobians.values()]  # each (n, Dg, K, T, P_name)

    def contract(self, f1, f2, diagonal=False):
        total = None
        for j1, j2 in zip(f1, f2):
            block = contract_jacobians(j1, j2, diagonal)
            total = block if total is None else total + block
        return total / self.axes.T

    def bytes_per_example(self):
        problem = self.problem
        per_example = 1 if problem.per_example else problem.x1.shape[0]  # batch Jacobians grow with n
        return problem.itemsize * (self.axes.n_outputs * problem.n_params * per_example + self._backward_memory())

    @classmethod
    def cost(cls, problem, structure, n1, n2):
        o, p = problem.axes.n_outputs, problem.n_params
        # one forward pass, then O backward passes for input and weight gradients (2 FP each)
        passes = (n1 + (0 if problem.same_inputs else n2)) * (1 + 2 * o) * structure.flops
        if not problem.per_example:
            passes *= max(n1, n2)
        return passes + 2 * n1 * n2 * problem.axes.n_pairs * p
