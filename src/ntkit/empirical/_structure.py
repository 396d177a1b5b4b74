"""Which layers of a model the structured implementation can handle, found on one example.

A layer qualifies when its parameter Jacobian factorizes through *patches*: for a weight ``W``
applied at positions ``l`` (a ``Linear`` on a sequence, a convolution on an image),

.. math:: \\frac{\\partial f^o}{\\partial W} = s_w \\sum_l g^o_l \\, u_l^\\top, \\qquad
          \\frac{\\partial f^o}{\\partial b} = s_b \\sum_l g^o_l,

with :math:`u_l` the layer's input patch at position ``l`` (the input vector for a ``Linear``,
the receptive field for a convolution), :math:`g^o_l` the cotangent of output unit ``o`` at
the layer's output and :math:`s_w, s_b` the parameterization's scales. A ``Rule`` turns the
recorded input and cotangent of one call into ``U`` of shape ``(n, L, groups, F_in)`` and ``G``
of shape ``(n, O, L, groups, F_out)``; several calls of one module concatenate along ``L``.

Discovery runs the model once on one example, watching every torch function call: a layer is
handled by its rule only if it is exactly ``torch.nn.Linear``, ``Conv1d/2d/3d``, ntkit's
``Dense`` or a normalization layer (its affine map, ``_normalization``) without forward hooks
(which may change its output), and each of its chosen parameters is used once per call, inside
its own ``forward`` (so a weight tied to another layer, or read by a parent, falls back to
autodiff).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.module import _global_forward_hooks
from torch.overrides import TorchFunctionMode

from ._normalization import normalization_rule
from ._problem import Problem, _close, composite_kernels


class LinearRule:
    """``torch.nn.Linear`` on ``(*positions, F_in)``."""

    @staticmethod
    def patches(module, a):
        return a.reshape(a.shape[0], -1, 1, a.shape[-1])

    @staticmethod
    def cotangents(module, g):
        return g.reshape(g.shape[0], g.shape[1], -1, 1, g.shape[-1])

    @staticmethod
    def scales(module):
        return 1.0, 1.0

    @staticmethod
    def widths(module):
        return 1, module.in_features, module.out_features


class DenseRule:
    """ntkit's ``Dense``: channels on axis 1, positions on the others, NTK scales in the forward."""

    @staticmethod
    def patches(module, a):
        return a.movedim(2, -1).reshape(a.shape[0], -1, 1, a.shape[2])

    @staticmethod
    def cotangents(module, g):
        return g.movedim(3, -1).reshape(g.shape[0], g.shape[1], -1, 1, g.shape[3])

    @staticmethod
    def scales(module):
        if module.parameterization == "ntk":
            return module.W_std / math.sqrt(module.in_features), (module.b_std or 0.0)
        return 1.0, 1.0

    @staticmethod
    def widths(module):
        return 1, module.in_features, module.out_features


class ConvRule:
    """``torch.nn.Conv1d/2d/3d``: receptive fields (any padding mode, stride, dilation, groups)."""

    @staticmethod
    def _pads(module) -> list[int]:
        """F.pad's list (last spatial axis first) for the module's padding."""
        kernel, dilation = module.kernel_size, module.dilation
        if isinstance(module.padding, str):
            totals = [0 if module.padding == "valid" else d * (k - 1) for k, d in zip(kernel, dilation)]
            pairs = [(t // 2, t - t // 2) for t in totals]
        else:
            pairs = [(p, p) for p in module.padding]
        return [side for pair in reversed(pairs) for side in pair]

    @staticmethod
    def patches(module, a):
        d = len(module.kernel_size)
        n, channels = a.shape[0], module.in_channels
        x = a.reshape(-1, channels, *a.shape[-d:])
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = nn.functional.pad(x, ConvRule._pads(module), mode=mode)
        for i, (k, s, dil) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
            x = x.unfold(2 + i, dil * (k - 1) + 1, s)[..., ::dil]
        # (B, C, *out, *kernel) -> (B, *out, C, *kernel) -> (n, L, groups, C/groups * prod(kernel))
        x = x.permute(0, *range(2, 2 + d), 1, *range(2 + d, 2 + 2 * d))
        return x.reshape(n, -1, module.groups, channels // module.groups * math.prod(module.kernel_size))

    @staticmethod
    def cotangents(module, g):
        d = len(module.kernel_size)
        n, o, channels = g.shape[0], g.shape[1], module.out_channels
        g = g.reshape(n, o, -1, channels, math.prod(g.shape[-d:]))  # (n, O, batch, C_out, positions)
        return g.movedim(3, -1).reshape(n, o, -1, module.groups, channels // module.groups)

    @staticmethod
    def scales(module):
        return 1.0, 1.0

    @staticmethod
    def widths(module):
        k = math.prod(module.kernel_size)
        return module.groups, module.in_channels // module.groups * k, module.out_channels // module.groups


def rule_for(module: nn.Module):
    """The rule for exactly this module type, or None (subclasses may change ``forward``)."""
    from ..layers.dense import Dense

    rule = {
        nn.Linear: LinearRule, nn.Conv1d: ConvRule, nn.Conv2d: ConvRule, nn.Conv3d: ConvRule, Dense: DenseRule,
    }.get(type(module))
    return rule or normalization_rule(module)


@dataclasses.dataclass
class Layer:
    """One module handled by its rule, with the parameters it covers and its calls' shapes."""

    path: str
    module: nn.Module
    rule: type
    weight: str | None  # name of the weight in Problem.params, None when not differentiated
    bias: str | None
    positions: int = 0  # L summed over the calls of one example
    groups: int = 1
    fan_in: int = 0  # F_in per group
    fan_out: int = 0  # F_out per group


@dataclasses.dataclass
class Structure:
    layers: list[Layer]
    calls: list[int]  # layer index of each hooked call, in call order
    probe_shapes: list[tuple[int, ...]]  # output shape of each call (one example)
    input_shapes: list[tuple[int, ...]]  # input shape of each call (one example)
    fallback: list[str]  # differentiated parameters left to autodiff
    flops: float  # forward FLOPs of one example
    activations: int  # elements of all leaf modules' outputs, one example
    widest: int  # elements of the largest one
    batch_layout: bool  # each call's tensors on a batch are its tensors on single examples, stacked


_CONVOLUTIONS = {nn.functional.conv1d, nn.functional.conv2d, nn.functional.conv3d}
_PRODUCTS = {torch.matmul, torch.mm, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm,
             torch.Tensor.bmm, torch.addmm, torch.baddbmm}


def _flops(func, args, out) -> float:
    """Floating-point operations of one torch function call, from its shapes: 2 per
    multiply-add of matrix products and convolutions, one per output element otherwise."""
    if not isinstance(out, torch.Tensor):
        return 0.0
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if func is nn.functional.linear and len(tensors) >= 2:
        return 2.0 * out.numel() * tensors[1].shape[-1]
    if func in _CONVOLUTIONS and len(tensors) >= 2:
        return 2.0 * out.numel() * tensors[1][0].numel()
    if func in _PRODUCTS and len(tensors) >= 2:
        first = tensors[-2]
        return 2.0 * out.numel() * (first.shape[-1] if first.ndim else 1)
    if func is nn.functional.scaled_dot_product_attention and len(tensors) >= 3:
        q, k = tensors[0], tensors[1]
        return 4.0 * q.numel() * k.shape[-2]
    return float(out.numel())


class _Uses(TorchFunctionMode):
    """Record, for each watched tensor, the innermost module running when a function used it,
    and count the forward pass's floating-point operations."""

    def __init__(self, watched: dict[int, str], stack: list):
        super().__init__()
        self.watched, self.stack, self.uses, self.flops = watched, stack, {}, 0.0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for leaf in _tensors((args, kwargs)):
            name = self.watched.get(id(leaf))
            if name is not None:
                self.uses.setdefault(name, []).append(self.stack[-1] if self.stack else None)
        out = func(*args, **kwargs)
        self.flops += _flops(func, args, out)
        return out


def _tensors(value):
    """The tensors in nested tuples, lists and dicts (``tree_leaves`` without its cost: this runs
    on every torch call of the watched forward pass)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _record(modules):
    """Forward hooks recording (module, input, output) of each call of the given modules."""
    calls = []

    def hook(module, args, output):
        calls.append((module, args[0] if args and isinstance(args[0], torch.Tensor) else None, output))

    return calls, [m.register_forward_hook(hook) for m in modules]


def _stacked(batch: list, single: list, examples: int) -> bool:
    """Whether each recorded tensor of the batch run (of ``examples`` examples) begins with the
    one of the single-example run and is ``examples`` times as long: the example axis leads
    everywhere, merged with the leading axis if at all (a tensor without an example axis, such as
    a layer applied to a buffer, is the same in both runs)."""
    if len(batch) != len(single):
        return False
    for (module, a, out), (module1, a1, out1) in zip(batch, single):
        if module is not module1:
            return False
        for big, small in ((a, a1), (out, out1)):
            if not isinstance(big, torch.Tensor) or not isinstance(small, torch.Tensor):
                return False
            if small.ndim == 0 or big.ndim != small.ndim or big.shape[1:] != small.shape[1:]:
                return False
            if big.shape[0] != examples * small.shape[0] or not _close(big[: small.shape[0]], small):
                return False
    return True


def discover(problem: Problem, probe: torch.Tensor, one_at_a_time: bool = True):
    """Run the model on ``probe`` (two examples) and on its first example alone.

    Returns the ``Structure``, the output on the batch and the output on the first example (None
    unless ``one_at_a_time``). The single-example run is watched: every torch function call
    (which module used which parameter, FLOPs) and every module's output size.
    """
    model = problem.model
    candidates = _candidates(problem)
    owned = {id(p): name for name, p in model.named_parameters() if name in problem.params}
    stack, sizes = [], []

    def enter(module, args):
        stack.append(module)

    def leave(module, args, output):
        stack.pop()
        if isinstance(output, torch.Tensor) and not any(True for _ in module.children()):
            sizes.append(output.numel())

    def forward(x):
        if problem._direct:  # no module in training mode owns buffers: the model as it is
            return model(x)
        # fresh copies: a module that updates its buffers must not change the model's
        return functional_call(model, {k: b.clone() for k, b in problem.buffers.items()}, (x,))

    def run(x, watched: bool):
        calls, handles = _record(list(candidates))
        uses = _Uses(owned, stack)
        if watched:
            handles += [m.register_forward_pre_hook(enter) for m in model.modules()]
            handles += [m.register_forward_hook(leave) for m in model.modules()]
        try:
            with composite_kernels(), (uses if watched else contextlib.nullcontext()):
                out = problem.check_output(problem.transform(forward(x)), x)
        finally:
            for handle in handles:
                handle.remove()
        return out, calls, uses

    single, single_calls = None, []
    if one_at_a_time:
        try:
            single, single_calls, uses = run(probe[:1], watched=True)
            n = 1
        except Exception:  # not runnable on one example: not per-example, no structure
            one_at_a_time = False
    out, batch_calls, batch_uses = run(probe, watched=not one_at_a_time)
    if not one_at_a_time:
        uses, n = batch_uses, probe.shape[0]
    return _structure(problem, candidates, single_calls, uses, one_at_a_time, sizes, n,
                      _stacked(batch_calls, single_calls, probe.shape[0]) if one_at_a_time else False), out, single


def _candidates(problem: Problem) -> dict:
    candidates = {}
    if _global_forward_hooks:  # they may change any module's output
        return candidates
    for path, module in problem.model.named_modules():
        rule = rule_for(module)
        # a forward hook may change the layer's output, which the rule computes from its input
        if rule is not None and not module._forward_hooks:
            names = {attr: f"{path}.{attr}" if path else attr for attr in ("weight", "bias")}
            has_bias = getattr(module, "bias", None) is not None
            candidates[module] = Layer(
                path, module, rule,
                weight=names["weight"] if names["weight"] in problem.params else None,
                bias=names["bias"] if has_bias and names["bias"] in problem.params else None,
            )
    return candidates


def _structure(problem, candidates, calls, uses, per_example, sizes, n, batch_layout) -> Structure:
    n_calls = {m: 0 for m in candidates}
    inputs_ok = {m: True for m in candidates}
    for module, a, out in calls:
        n_calls[module] += 1
        inputs_ok[module] &= a is not None and isinstance(out, torch.Tensor)
    layers = []
    for module, layer in candidates.items():
        chosen = [name for name in (layer.weight, layer.bias) if name is not None]
        good = per_example and n_calls[module] > 0 and inputs_ok[module] and all(
            uses.uses.get(name, []) == [module] * n_calls[module] for name in chosen
        )
        if chosen and good:
            layer.groups, layer.fan_in, layer.fan_out = layer.rule.widths(module)
            layer.positions = sum(layer.rule.patches(module, a.unsqueeze(0)).shape[1]
                                  for m, a, _ in calls if m is module)
            layers.append(layer)
    kept = {layer.module: i for i, layer in enumerate(layers)}
    covered = {name for layer in layers for name in (layer.weight, layer.bias) if name is not None}
    return Structure(
        layers=layers,
        calls=[kept[m] for m, _, _ in calls if m in kept],
        probe_shapes=[tuple(out.shape) for m, _, out in calls if m in kept],
        input_shapes=[tuple(a.shape) for m, a, _ in calls if m in kept],
        fallback=[name for name in problem.params if name not in covered],
        flops=uses.flops / n,
        activations=sum(sizes) // n,
        widest=max(sizes, default=0) // n,
        batch_layout=batch_layout,
    )
