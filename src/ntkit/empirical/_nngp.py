"""``empirical_nngp``: the kernel of a finite network's outputs (or of one layer's features)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from .._errors import NtkitError
from ._axes import OutputAxes
from ._base import contract_jacobians
from ._blocks import assemble, chunk_size, resolve_budget
from ._problem import _close, as_examples, check_model, materialize


def _find_layer(model: nn.Module, layer) -> nn.Module:
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules:
            raise NtkitError(f"layer: model has no submodule named {layer!r}; some are {list(modules)[1:8]}")
        return modules[layer]
    if isinstance(layer, nn.Module) and any(m is layer for m in model.modules()):
        return layer
    raise NtkitError(f"layer must be a submodule of model or its name, got {type(layer).__name__}")


def empirical_nngp(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    trace_axes=(-1,),
    diagonal_axes=(),
    layer=None,
    batch_size: int | None = None,
    memory_budget: float | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Empirical NNGP kernel: the outer product of a finite network's outputs, traced.

    .. math:: K(x, x')_{oo'} = f_o(x)\\, f_{o'}(x'),

    averaged over ``trace_axes`` (as neural-tangents' ``empirical_nngp_fn``): with the default
    ``trace_axes=(-1,)``, :math:`\\frac{1}{C} \\sum_c f_c(x) f_c(x')`, whose average over random
    initializations is the NNGP kernel at the readout (Lee et al. 2018, eq. 4), comparable with
    ntkit's ``net.kernel(x1, x2).nngp``. Cost: one forward pass per example and
    :math:`N_1 N_2 O` for the products.

    Parameters
    ----------
    model : torch.nn.Module
        Any deterministic module (``model.eval()`` for Dropout) mapping ``(N, ...)`` to
        ``(N, *S)``; it needs no parameters.
    x1, x2 : Tensor
        As in :func:`ntkit.empirical_ntk`.
    trace_axes, diagonal_axes : int or tuple of int
        As in :func:`ntkit.empirical_ntk`, for the axes of the model's (or the layer's) output.
    layer : torch.nn.Module or str, optional
        A submodule (or its name in ``model.named_modules()``) whose output features are used
        instead of the model's output; it must run once per forward pass.
    batch_size, memory_budget, progress
        As in :func:`ntkit.empirical_ntk`.

    Returns
    -------
    Tensor
        Shape as in :func:`ntkit.empirical_ntk`, in the output's dtype.
    """
    materialize(model, x1)
    check_model(model)
    target = None if layer is None else _find_layer(model, layer)
    floating = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    dtype = floating[0].dtype if floating else (x1.dtype if torch.is_tensor(x1) and x1.is_floating_point() else torch.get_default_dtype())
    device = floating[0].device if floating else (x1.device if torch.is_tensor(x1) else torch.device("cpu"))
    same = x2 is None or x2 is x1
    x1 = as_examples(x1, "x1", dtype, device)
    x2 = x1 if same else as_examples(x2, "x2", dtype, device)
    if x2.shape[1:] != x1.shape[1:]:
        raise NtkitError(f"x1 and x2 have different example shapes: {tuple(x1.shape)} and {tuple(x2.shape)}")
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    def outputs(x, sizes=None):
        """The model's (or the layer's) output on ``x``; with ``sizes``, also every module's
        output size, appended."""
        captured = []
        handles = [] if target is None else [target.register_forward_hook(lambda m, a, out: captured.append(out))]
        if sizes is not None:
            watch = lambda m, a, out: sizes.append(out.numel()) if isinstance(out, torch.Tensor) else None  # noqa: E731
            handles += [m.register_forward_hook(watch) for m in model.modules()]
        try:
            out = functional_call(model, buffers, (x,))
        finally:
            for handle in handles:
                handle.remove()
        if target is not None:
            if len(captured) != 1:
                raise NtkitError(f"layer ran {len(captured)} times in one forward pass; it must run exactly once")
            out = captured[0]
        if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != x.shape[0] or not out.is_floating_point():
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise NtkitError(
                f"the {'layer' if target is not None else 'model'} output is {shape} on inputs of shape "
                f"{tuple(x.shape)}; expected a floating-point tensor with the batch axis first"
            )
        return out

    with torch.no_grad():
        sizes = []
        probe = outputs(x1[:2], sizes)
        axes = OutputAxes(probe.shape, trace_axes, diagonal_axes)
        if not _close(probe, outputs(x1[:2])):
            raise NtkitError(
                "the model's outputs differ between two calls with the same inputs (e.g. Dropout in "
                "training mode); call model.eval() first"
            )
        if axes.batch_diagonal and x1.shape[0] != x2.shape[0]:
            raise NtkitError(
                f"diagonal_axes contains the batch axis 0, which needs as many examples in x2 as in "
                f"x1; got {x1.shape[0]} and {x2.shape[0]}"
            )
        budget = resolve_budget(memory_budget, x1.device)
        # the outputs of a chunk, and the forward pass's transient activations (no autograd: a
        # few of the largest at a time)
        widest = max(sizes) // probe.shape[0]
        per_example = probe.element_size() * (4 * (math.prod(probe.shape[1:]) + math.prod(x1.shape[1:])) + 3 * widest)
        chunk = chunk_size(per_example, batch_size, budget, max(x1.shape[0], x2.shape[0]), "empirical_nngp")
        block = assemble(
            lambda x: axes.split(outputs(x)),  # (n, Dg, K, T, 1)
            lambda f1, f2, diagonal: contract_jacobians(f1, f2, diagonal) / axes.T,
            x1, x2, same, axes.batch_diagonal, chunk,
            transpose=axes.transpose,
            cache_columns=x2.shape[0] * per_example <= budget / 2,
            progress=progress,
            desc="empirical NNGP",
        )
    return axes.layout(block)

