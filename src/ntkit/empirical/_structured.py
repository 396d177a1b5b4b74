"""``implementation="structured"``: the NTK of Linear and convolutional layers from their inputs
and cotangents, without forming their Jacobians unless that is cheaper.

For a layer that applies a weight at positions ``l`` (see ``_structure``), the contribution of
its weight to the NTK of output units ``o, o'`` is

.. math::
    \\Theta_W(x_i, x_j)_{oo'} = s_w^2 \\sum_{l, m} (u_{il} \\cdot u_{jm})\\,(g^o_{il} \\cdot g^{o'}_{jm}),

which for a ``Linear`` layer on vectors (one position) is the product of two small Gram
matrices, :math:`(a_1 a_2^\\top) \\circ (g_1 g_2^\\top)` (Novak et al. 2022, "Fast finite width
neural tangent kernel", Sec. 4 "structured derivatives"). For convolutions either this *Gram
path* (cost :math:`N_1 N_2 L^2 (F_{in} + O F_{out})`) or the *explicit path*, forming the
per-example weight Jacobian :math:`J^o = \\sum_l g^o_l u_l^\\top` (cost
:math:`N O L F_{in} F_{out}`) and contracting it (:math:`N_1 N_2 O F_{in} F_{out}`), is taken,
whichever is cheaper for the block at hand. A layer whose Jacobian is no larger than its
recorded inputs and cotangents (a convolution over many positions, a normalization layer's
affine map) keeps only the Jacobian, formed once per example: smaller features, which the
driver can then keep for every column of blocks, and a contraction cheaper than the Gram path.
Biases contribute :math:`s_b^2 (\\sum_l g^o_{il})
\\cdot (\\sum_m g^{o'}_{jm})`.

The inputs ``u`` are recorded by forward hooks; the cotangents ``g`` are the gradients of
zero *probes* added to the layers' outputs, all computed in one ``torch.func.vjp`` per example,
``vmap``-ed over the one-hot output cotangents. Parameters of any other module are
differentiated in the same pass, and their per-example Jacobians contracted as in
``jacobian_contraction``: the autodiff fallback. Needs a model that treats examples
independently (``model.eval()`` for BatchNorm).
"""

from __future__ import annotations

import functools
import math

import torch
from torch.func import vjp, vmap

from .._errors import NtkitError
from ._base import Implementation, contract_jacobians


#: On the CPU, a chunk's features are computed in passes whose working memory (activations,
#: cotangents, patches) stays under PASS_BYTES_CPU, as long as every layer over several
#: positions keeps at least MIN_ROWS_PER_PASS rows (examples x positions) in its matrix
#: products. Such passes run as fast as whole chunks: glibc returns large blocks to the system
#: after each pass, so a larger pass faults in (and zeroes) fresh pages. Deep layers with few
#: positions (ResNet-18's last 4x4 stage) need more examples per pass to keep their speed
#: (measured: 30% slower in passes of one). What is kept stays chunk-sized.
PASS_BYTES_CPU = 16 * 2**20
MIN_ROWS_PER_PASS = 256


class _Features:
    """One chunk's features: per layer its inputs ``U`` and cotangents ``G`` (split by output
    axes), or None where the layer's Jacobians are in ``jacobians``, with those of the other
    modules' parameters (each ``(n, Dg, K, T, P)``, already multiplied by its scale)."""

    def __init__(self, patches, cotangents, jacobians, n):
        self.patches, self.cotangents, self.jacobians, self.n = patches, cotangents, jacobians, n

    @classmethod
    def cat(cls, parts: list["_Features"]) -> "_Features":
        """The features of consecutive passes over one chunk, as one chunk's."""

        def join(tensors):
            return None if tensors[0] is None else torch.cat(tensors)

        return cls([join(t) for t in zip(*(f.patches for f in parts))],
                   [join(t) for t in zip(*(f.cotangents for f in parts))],
                   [join(t) for t in zip(*(f.jacobians for f in parts))],
                   sum(f.n for f in parts))


class Structured(Implementation):
    name = "structured"

    #: set by monte_carlo_kernel: features are computed under vmap over networks, where only
    #: torch.func transforms (not torch.autograd.grad) are available
    functional = False

    @staticmethod
    def available(problem, structure):
        if not problem.per_example:
            return f"it needs a model that treats examples independently: {problem.why_not_per_example}"
        if not _batched_path(structure) and not problem.vmappable:
            return problem.why_not_per_example
        return ""

    def features(self, params, x):
        batched = not self.functional and _batched_path(self.structure)
        compute = self._features_batched if batched else self._features_per_example
        step = self._examples_per_pass
        if self.functional or x.shape[0] <= step:
            return compute(params, x)
        return _Features.cat([compute(params, x[i : i + step]) for i in range(0, x.shape[0], step)])

    @functools.cached_property
    def _examples_per_pass(self) -> int | float:
        """Examples per forward-and-backward pass: on the CPU as many as ``PASS_BYTES_CPU``
        holds, or as ``MIN_ROWS_PER_PASS`` needs if more; elsewhere the whole chunk (a GPU needs
        large batches)."""
        if self.problem.device.type != "cpu":
            return float("inf")
        by_memory = int(PASS_BYTES_CPU // self._pass_bytes_per_example())
        by_rows = max((math.ceil(MIN_ROWS_PER_PASS / layer.positions) for layer in self.structure.layers
                       if layer.positions > 1), default=1)
        return max(1, by_memory, by_rows)

    def _hook(self, state):
        """A forward hook that records a layer's input and adds a probe to its output."""
        structure = self.structure
        modules = [layer.module for layer in structure.layers]

        def hook(module, args, output):
            k = state["count"]
            if k >= len(structure.calls) or modules[structure.calls[k]] is not module:
                raise NtkitError(
                    "the model called its layers in a different order than on the first example "
                    "(data-dependent control flow); use implementation='jacobian_contraction'"
                )
            state["count"] = k + 1
            state["inputs"].append(args[0])
            return output + state["probe"](k, output)

        return [m.register_forward_hook(hook) for m in dict.fromkeys(modules)]

    def _features_batched(self, params, x):
        """The chunk as one batch: one forward pass and one backward pass per output unit
        (``torch.autograd.grad`` batched over the unit cotangents). Valid when examples are
        independent and every layer's example axis leads (checked by ``discover``); the
        parameters of other modules need per-example Jacobians, hence the other path."""
        problem, structure, axes = self.problem, self.structure, self.axes
        probes = []

        def probe(k, output):
            probes.append(torch.zeros_like(output, requires_grad=True))
            return probes[-1]

        state = dict(count=0, inputs=[], probe=probe)
        handles = self._hook(state)
        try:
            with torch.enable_grad():
                out = problem.function(params, x)
        finally:
            for handle in handles:
                handle.remove()
        n, o = x.shape[0], axes.n_outputs
        basis = axes.basis(problem.dtype, problem.device)
        cotangents = basis.unsqueeze(1).expand(o, n, *basis.shape[1:])
        grads = torch.autograd.grad(out, probes, cotangents, is_grads_batched=True, allow_unused=True,
                                    materialize_grads=True)
        inputs = [a.detach().reshape(n, *shape) for a, shape in zip(state["inputs"], structure.input_shapes)]
        grads = [g.reshape(o, n, *shape).transpose(0, 1) for g, shape in zip(grads, structure.probe_shapes)]
        return self._assemble(inputs, grads, {})

    def _features_per_example(self, params, x):
        """One vjp per example (``torch.func``), vmapped over examples and output units; also
        differentiates the parameters of other modules (the autodiff fallback)."""
        problem, structure, axes = self.problem, self.structure, self.axes
        fallback = {name: params[name] for name in structure.fallback}
        fixed = {name: p for name, p in params.items() if name not in fallback}
        basis = axes.basis(problem.dtype, problem.device)
        probes = tuple(torch.zeros(s, dtype=problem.dtype, device=problem.device) for s in structure.probe_shapes)
        state = {}

        def single(fallback, probes, x):
            state.update(count=0, inputs=[], probe=lambda k, output: probes[k])
            out = problem.single({**fixed, **fallback}, x)
            return out, tuple(state["inputs"])

        def per_example(x):
            _, pullback, inputs = vjp(lambda f, p: single(f, p, x), fallback, probes, has_aux=True)
            fallback_jacobians, cotangents = vmap(pullback)(basis)
            return inputs, cotangents, fallback_jacobians

        handles = self._hook(state)
        try:
            inputs, cotangents, fallback_jacobians = vmap(per_example, randomness="different")(x)
        finally:
            for handle in handles:
                handle.remove()
        return self._assemble(inputs, cotangents, fallback_jacobians)

    def _assemble(self, inputs, cotangents, fallback_jacobians):
        """Per layer: patches ``(n, L, groups, F_in)`` and cotangents ``(n, Dg, K, T, L, groups,
        F_out)``, several calls concatenated along L, or, for the layers in ``_kept``, their
        Jacobians, formed here once per example; fallback Jacobians ``(n, Dg, K, T, P)``."""
        structure, axes = self.structure, self.axes
        modules = [layer.module for layer in structure.layers]
        patches, grads = [[] for _ in modules], [[] for _ in modules]
        for index, a, g in zip(structure.calls, inputs, cotangents):
            rule, module = structure.layers[index].rule, modules[index]
            patches[index].append(rule.patches(module, a))
            grads[index].append(rule.cotangents(module, g))
        patches = [torch.cat(p, dim=1) if len(p) > 1 else p[0] for p in patches]
        grads = [torch.cat(g, dim=2) if len(g) > 1 else g[0] for g in grads]
        # (n, O, L, groups, F_out) -> (n, Dg, K, T, L, groups, F_out): O is ordered (Dg, K, T)
        grads = [g.reshape(g.shape[0], axes.Dg, axes.K, axes.T, *g.shape[2:]) for g in grads]
        jacobians = [j.reshape(j.shape[0], axes.Dg, axes.K, axes.T, -1) for j in fallback_jacobians.values()]
        n = grads[0].shape[0] if grads else jacobians[0].shape[0]
        for index in self._kept:
            layer = structure.layers[index]
            s_w, s_b = layer.rule.scales(layer.module)
            if layer.weight is not None:
                jacobians.append(_scaled(_weight_jacobian(grads[index], patches[index]), s_w))
            if layer.bias is not None:
                jacobians.append(_scaled(_bias_jacobian(grads[index]), s_b))
            patches[index] = grads[index] = None
        return _Features(patches, grads, jacobians, n)

    def _sizes(self, layer) -> tuple[int, int]:
        """Elements per example of a layer's Jacobians (weight and bias) and of its recorded
        inputs and cotangents."""
        o = self.axes.n_outputs
        jacobian = o * layer.groups * layer.fan_out * ((layer.fan_in if layer.weight is not None else 0)
                                                       + (1 if layer.bias is not None else 0))
        recorded = layer.positions * layer.groups * (layer.fan_in + o * layer.fan_out)
        return jacobian, recorded

    @functools.cached_property
    def _kept(self) -> list[int]:
        """The layers whose Jacobians the features keep, instead of their inputs and cotangents.

        First every layer whose Jacobian is no larger (a convolution over many positions, a
        normalization layer's affine map): its contraction is then also cheaper than the Gram
        path. Then, while every example's features still fit in the driver's column cache (half
        the budget), layers with a larger Jacobian whose contraction still beats the Gram path,
        smallest increase first. A kept Jacobian is formed once per example instead of once per
        block that needs it.
        """
        layers = self.structure.layers
        sizes = [self._sizes(layer) for layer in layers]  # (Jacobian, recorded) elements
        grouped = [i for i, layer in enumerate(layers) if layer.positions > 1 or layer.groups > 1]
        kept = [i for i in grouped if sizes[i][0] <= sizes[i][1]]
        allowance = self.memory_budget / 2 / self.problem.x2.shape[0] - self._kept_bytes(kept)
        costs = {i: self._pair_costs(layers[i]) for i in grouped if i not in kept}  # (Gram, contraction)
        cheaper = [i for i, (gram, contraction) in costs.items() if contraction <= gram]
        for i in sorted(cheaper, key=lambda i: sizes[i][0] - sizes[i][1]):
            extra = self.problem.itemsize * (sizes[i][0] - sizes[i][1])
            if extra <= allowance:
                kept.append(i)
                allowance -= extra
        return sorted(kept)

    def _kept_bytes(self, kept) -> float:
        o = self.axes.n_outputs
        elements = o * sum(self.problem.params[name].numel() for name in self.structure.fallback)
        for index, layer in enumerate(self.structure.layers):
            jacobian, recorded = self._sizes(layer)
            elements += jacobian if index in kept else recorded
        return self.problem.itemsize * elements

    # -- contraction ----------------------------------------------------------------------------

    def contract(self, f1, f2, diagonal=False):
        total = None
        for index, layer in enumerate(self.structure.layers):
            u1, u2 = f1.patches[index], f2.patches[index]
            if u1 is None:  # its Jacobians are in f.jacobians
                continue
            s_w, s_b = layer.rule.scales(layer.module)
            g1, g2 = f1.cotangents[index], f2.cotangents[index]
            if u1.shape[1] == 1 and u2.shape[1] == 1 and layer.groups == 1:
                # one position: (a1 a2^T) o (g1 g2^T) for the weight, g1 g2^T for the bias
                b = contract_jacobians(g1.flatten(4), g2.flatten(4), diagonal)
                if layer.weight is not None:
                    u1, u2 = u1.flatten(1), u2.flatten(1)
                    a = (u1 * u2).sum(-1) if diagonal else u1 @ u2.T
                    total = _add(total, a.reshape(*a.shape, 1, 1, 1) * b, s_w**2)
                if layer.bias is not None:
                    total = _add(total, b, s_b**2)
                continue
            if layer.weight is not None:
                if self._gram_is_cheaper(layer, f1.n, f2.n, diagonal, f1 is f2):
                    block = self._gram(u1, u2, g1, g2, diagonal)
                else:  # formed for this block only: a Jacobian larger than the recorded tensors
                    j1 = _weight_jacobian(g1, u1)
                    j2 = j1 if f2 is f1 else _weight_jacobian(g2, u2)
                    block = contract_jacobians(j1, j2, diagonal)
                total = _add(total, block, s_w**2)
            if layer.bias is not None:
                total = _add(total, contract_jacobians(_bias_jacobian(g1), _bias_jacobian(g2), diagonal), s_b**2)
        for j1, j2 in zip(f1.jacobians, f2.jacobians):
            total = _add(total, contract_jacobians(j1, j2, diagonal), 1.0)
        return total / self.axes.T

    @staticmethod
    def _gram(u1, u2, g1, g2, diagonal):
        """Weight term through Gram matrices over positions (groups == 1)."""
        u1, u2, g1, g2 = u1.squeeze(2), u2.squeeze(2), g1.squeeze(5), g2.squeeze(5)
        if diagonal:
            a = torch.einsum("ilf,imf->ilm", u1, u2)
            return torch.einsum("ilm,idktlf,idstmf->idks", a, g1, g2)
        a = torch.einsum("ilf,jmf->ijlm", u1, u2)
        b = torch.einsum("idktlf,jdstmf->ijdkslm", g1, g2)
        return torch.einsum("ijlm,ijdkslm->ijdks", a, b)

    def _gram_is_cheaper(self, layer, n1, n2, diagonal, same_features) -> bool:
        if layer.groups != 1:
            return False
        axes = self.axes
        pairs = axes.n_pairs
        n2 = 1 if diagonal else n2
        positions = layer.positions
        memory = n1 * n2 * pairs * positions**2 * self.problem.itemsize
        if positions > 1 and memory > self.memory_budget / 4:
            return False
        forming = (n1 if same_features else n1 + n2) * axes.n_outputs * positions * layer.fan_in * layer.fan_out
        gram, contraction = self._pair_costs(layer)
        return n1 * n2 * gram <= forming + n1 * n2 * contraction

    def _pair_costs(self, layer) -> tuple[int, int]:
        """Multiply-adds per pair of examples of a layer's weight term: by the Gram path, and by
        contracting Jacobians already formed."""
        pairs = self.axes.n_pairs
        gram = layer.positions**2 * (layer.fan_in + pairs * layer.fan_out + pairs)
        return gram, pairs * layer.fan_in * layer.fan_out

    # -- budget and cost ----------------------------------------------------------------------------

    def bytes_per_example(self):
        """The larger of the features' computation (see ``_pass_bytes_per_example``) and a
        block's contraction (the kept features, and the largest Jacobian formed for one block).
        An upper bound on the CPU, where a chunk's features are computed in smaller passes."""
        largest = max((self._sizes(layer)[0] for index, layer in enumerate(self.structure.layers)
                       if index not in self._kept and layer.positions > 1), default=0)
        return max(self._pass_bytes_per_example(),
                   self.bytes_kept_per_example() + self.problem.itemsize * largest)

    def _pass_bytes_per_example(self) -> float:
        """Working memory of one example in a pass: activations kept for the backward pass, every
        layer's inputs and cotangents, and the Jacobians formed from them."""
        o = self.axes.n_outputs
        recorded = o * sum(self.problem.params[name].numel() for name in self.structure.fallback)
        for index, layer in enumerate(self.structure.layers):
            jacobian, inputs_and_cotangents = self._sizes(layer)
            recorded += inputs_and_cotangents + (jacobian if index in self._kept else 0)
        return self.problem.itemsize * (self._backward_memory() + recorded)

    def bytes_kept_per_example(self):
        """What a chunk's features keep once computed (the driver's column cache)."""
        return self._kept_bytes(self._kept)

    @classmethod
    def cost(cls, problem, structure, n1, n2):
        axes, o = problem.axes, problem.axes.n_outputs
        examples = n1 + (0 if problem.same_inputs else n2)
        # one forward pass, then O backward passes for the cotangents only (no weight gradients)
        total = examples * (1 + o) * structure.flops
        for layer in structure.layers:
            weights = layer.groups * layer.fan_in * layer.fan_out
            explicit = examples * o * layer.positions * weights + n1 * n2 * axes.n_pairs * weights
            gram = n1 * n2 * layer.positions**2 * (layer.fan_in + axes.n_pairs * layer.fan_out)
            total += 2 * (explicit if layer.groups > 1 else min(explicit, gram))
        fallback = sum(problem.params[name].numel() for name in structure.fallback)
        return total + 2 * n1 * n2 * axes.n_pairs * fallback


def _weight_jacobian(g, u):
    """Per-example weight Jacobian :math:`\\sum_l g_l u_l^\\top`, shape (n, Dg, K, T, P)."""
    return torch.einsum("idktlgf,ilgh->idktgfh", g, u).flatten(4)


def _bias_jacobian(g):
    """Per-example bias Jacobian :math:`\\sum_l g_l`, shape (n, Dg, K, T, groups F_out)."""
    return g.sum(dim=4).flatten(4)


def _scaled(jacobian, scale):
    return jacobian if scale == 1.0 else jacobian.mul_(scale)


def _batched_path(structure) -> bool:
    """Whether the batched autograd path applies: every parameter in a patch layer, and the
    example axis leading in every such layer's input and output."""
    return not structure.fallback and structure.batch_layout


def _add(total, block, scale):
    block = block if scale == 1.0 else block * scale
    return block if total is None else total + block
