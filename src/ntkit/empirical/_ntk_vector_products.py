"""``implementation="ntk_vector_products"``: columns of the NTK without storing a Jacobian.

Each column is one NTK-vector product, :math:`\\Theta v = J_1 (J_2^\\top v)`: a
vector-Jacobian product on the second chunk (``torch.func.vjp``) gives a parameter-space
tangent, and a Jacobian-vector product on the first chunk (``torch.func.jvp``, forward mode)
maps it to outputs. The ``v`` run over the one-hot cotangents of every example and output unit
of the second chunk, ``vmap``-ed in groups that fit the memory budget.

Cost (Novak et al. 2022, Table 1): :math:`N_2 O` columns, each a backward pass on one example
and a forward-mode pass on the first chunk: about :math:`N_1 N_2 O\\,[\\mathrm{FP}]`, and no
:math:`O P` Jacobian in memory. It wins when the forward pass is cheap relative to
:math:`O P`: fully-connected networks whose outputs are not traced, or when Jacobians do not fit
in memory. Needs forward-mode AD for every operation of the model.
"""

from __future__ import annotations

import torch
from torch.func import jvp, vjp, vmap

from ._base import Implementation


class NtkVectorProducts(Implementation):
    name = "ntk_vector_products"

    def features(self, params, x):
        return params, x

    def contract(self, f1, f2, diagonal=False):
        (params, x1), (_, x2) = f1, f2
        problem, axes = self.problem, self.axes
        n1, n2, o = x1.shape[0], x2.shape[0], axes.n_outputs
        basis = axes.basis(problem.dtype, problem.device)

        def column(x2_j, v):
            if problem.per_example:
                _, pullback = vjp(lambda p: problem.single(p, x2_j), params)
            else:  # v is a cotangent of the whole chunk
                _, pullback = vjp(lambda p: problem.function(p, x2), params)
            (tangent,) = pullback(v)
            return jvp(lambda p: problem.function(p, x1), (params,), (tangent,))[1]

        if problem.per_example:
            xs, vs = x2.repeat_interleave(o, dim=0), basis.repeat(n2, *[1] * (basis.ndim - 1))
        else:
            xs = x2[:1].expand(n2 * o, *x2.shape[1:])  # unused: the whole chunk is differentiated
            eye = torch.eye(n2, dtype=problem.dtype, device=problem.device)
            vs = torch.einsum("jk,o...->jok...", eye, basis).reshape(n2 * o, n2, *basis.shape[1:])
        if problem.per_example and not problem.vmappable:  # an LSTM, .item(): column by column
            columns = torch.stack([column(x2_j, v) for x2_j, v in zip(xs, vs)])
        else:
            chunk = max(1, int(self.memory_budget // self._bytes_per_column(n1)))
            columns = vmap(column, chunk_size=chunk, randomness="different")(xs, vs)  # (n2 * O, n1, *S)
        # column (j, d', k', t') at output (i, d, k, t): keep d = d', t = t' and sum over t
        columns = axes.split(columns.reshape(n2, o, n1, *axes.example_shape), lead=3)
        columns = columns.reshape(n2, axes.Dg, axes.K, axes.T, n1, axes.Dg, axes.K, axes.T)
        block = torch.einsum("jdktidst->ijdsk", columns) / axes.T
        if diagonal:
            return torch.einsum("iidks->idks", block)
        return block

    def _bytes_per_column(self, n1: int) -> float:
        problem = self.problem
        return problem.itemsize * (2 * problem.n_params + 3 * n1 * self.structure.activations)

    def bytes_per_example(self):
        problem = self.problem
        # a group of columns of one example, and the block they fill
        return problem.itemsize * (4 * self.structure.activations + 2 * self.axes.n_outputs**2) + self._bytes_per_column(1)

    @staticmethod
    def available(problem, structure):
        return problem.why_no_forward_mode

    @classmethod
    def cost(cls, problem, structure, n1, n2):
        o = problem.axes.n_outputs
        vjp_examples = 1 if problem.per_example else n2
        return n2 * o * 3 * structure.flops * (vjp_examples + n1)
