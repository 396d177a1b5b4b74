"""The common part of every empirical kernel: a model, its parameters, inputs and output axes.

``Problem`` checks the arguments once (with errors that name the argument, the shape or value
and the remedy), makes the model a pure function of the differentiated parameters,
``function(params, x)``, and finds out, on one or two examples, what the implementations need
to know: the output shape, whether the model treats examples independently (so that Jacobians
can be taken one example at a time under ``torch.func.vmap``) and whether it is deterministic.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parameter import is_lazy

from .._errors import NtkitError
from ._axes import OutputAxes


def check_model(model, what: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise NtkitError(f"{what} must be a torch.nn.Module, got {type(model).__name__}")
    lazy = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if is_lazy(t)]
    if lazy:
        raise NtkitError(
            f"{what} has uninitialized (lazy) parameters {lazy[:3]}: run one forward pass, e.g. "
            "model(x[:1]), to materialize them first"
        )


def materialize(model, x1) -> None:
    """Give a lazy model (ntkit's layers, ``torch.nn.LazyLinear``) its parameters, as its first
    call would: one forward pass on the first example of ``x1``, without gradients."""
    if not (isinstance(model, nn.Module) and torch.is_tensor(x1) and x1.ndim >= 1 and len(x1) > 0):
        return
    if any(is_lazy(t) for t in (*model.parameters(), *model.buffers())):
        with torch.no_grad():
            model(x1[:1])


def select_parameters(model: nn.Module, params) -> dict[str, torch.Tensor]:
    """The differentiated parameters by name: all trainable ones, or the chosen subset.

    ``params`` is None (every parameter with ``requires_grad``), a submodule of ``model``, a
    parameter name, a ``Parameter`` of ``model``, or an iterable of those.
    """
    named = dict(model.named_parameters())
    if params is None:
        chosen = {name: p for name, p in named.items() if p.requires_grad}
        if not chosen:
            raise NtkitError(
                f"model ({type(model).__name__}) has no trainable parameters (none with "
                "requires_grad=True), so its NTK is zero; pass params=... to choose some"
            )
        return {name: p.detach() for name, p in chosen.items()}
    by_id = {id(p): name for name, p in named.items()}
    items = [params] if isinstance(params, (str, nn.Module, torch.Tensor)) else params
    if not isinstance(items, Iterable):
        raise NtkitError(f"params must be a submodule, a parameter name, a Parameter, or a list of them; got {params!r}")
    chosen = {}
    for item in items:
        if isinstance(item, nn.Module):
            found = [by_id.get(id(p)) for p in item.parameters()]
            if None in found or not found:
                raise NtkitError(f"params: the module {type(item).__name__} is not a submodule of model with parameters")
            chosen.update({name: named[name] for name in found})
        elif isinstance(item, str):
            if item not in named:
                raise NtkitError(
                    f"params: model has no parameter named {item!r}; its parameters are "
                    f"{list(named)[:8]}{' ...' if len(named) > 8 else ''}"
                )
            chosen[item] = named[item]
        elif isinstance(item, torch.Tensor) and id(item) in by_id:
            chosen[by_id[id(item)]] = item
        else:
            raise NtkitError(f"params: {type(item).__name__} {getattr(item, 'shape', '')} is not a parameter of model")
    if not chosen:
        raise NtkitError("params selects no parameter; the NTK of no parameters is zero")
    return {name: p.detach() for name, p in chosen.items()}


def as_examples(x, argument: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``x`` as a batch on the model's device; floating inputs in the model's dtype and finite."""
    if not isinstance(x, torch.Tensor):
        raise NtkitError(f"{argument} must be a torch.Tensor of shape (N, ...), got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise NtkitError(f"{argument} has shape {tuple(x.shape)}; it needs a batch axis with at least one example")
    if x.is_floating_point():
        x = x.to(dtype=dtype, device=device)
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0, 0])
            raise NtkitError(f"{argument} contains NaN or inf (first in example {row})")
        return x
    if x.is_complex():
        raise NtkitError(f"{argument} has complex dtype {x.dtype}; expected real inputs")
    return x.to(device=device)  # integer inputs (token ids, ...) stay integer


@contextlib.contextmanager
def composite_kernels():
    """Run attention as plain torch operations, which every function transform supports.

    PyTorch's fused attention kernels (the ``TransformerEncoderLayer`` fast path in eval mode,
    the fused CPU/GPU ``scaled_dot_product_attention``) have no forward-mode derivative and no
    ``vmap`` batching rule; the math backend computes the same function from primitives.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _probe(x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Two examples to analyse the model on: the first, and the first that differs from it in
    ``x1`` or ``x2`` (so that a model mixing the examples of a batch shows it); the first twice,
    and False, when all examples are equal."""
    first = x1[:1]
    for x in (x1[:2], x1, x2):  # the second example mostly differs: no need to scan the rest
        differs = (x.reshape(x.shape[0], -1) != first.reshape(1, -1)).any(dim=1).nonzero()
        if len(differs):
            return torch.cat([first, x[differs[0]]]), True
    return torch.cat([first, first]), False


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of a differently blocked computation (sqrt(eps) relative)."""
    if a.shape != b.shape:
        return False
    tolerance = math.sqrt(torch.finfo(a.dtype).eps) * max(float(a.abs().max()), 1e-30)
    return bool(((a - b).abs() <= tolerance).all())


class Problem:
    """A model as a function of its differentiated parameters, with checked inputs.

    Attributes
    ----------
    params : dict of str to Tensor
        The differentiated parameters (detached), by name.
    function : callable ``(params, x) -> Tensor``
        The model's output on a batch ``x`` with those parameters (and everything else fixed).
    x1, x2 : Tensor
        The checked inputs; ``x2`` is ``x1`` when ``same_inputs``.
    probe, probe_distinct : Tensor, bool
        The two examples the model was analysed on, and whether they differ (see ``_probe``).
    axes : OutputAxes
    structure : Structure
        What one forward pass showed (see ``_structure.discover``): the layers the structured
        implementation handles, FLOPs and activation sizes.
    per_example : bool
        Whether each example's output depends on that example only (checked on two examples:
        their outputs as a batch and one at a time); ``why_not_per_example`` says what failed.
    vmappable : bool
        Whether the model also runs one example at a time under ``torch.func.vmap`` (checked
        when first needed).
    """

    def __init__(
        self,
        model: nn.Module,
        x1,
        x2=None,
        *,
        params=None,
        trace_axes=(-1,),
        diagonal_axes=(),
        deterministic: bool = True,
        output: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        from ._structure import discover  # the structure module needs Problem's functions

        materialize(model, x1)
        check_model(model)
        self.model = model
        self.params = select_parameters(model, params)
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device
        if not first.is_floating_point():
            raise NtkitError(f"the parameters have dtype {first.dtype}; expected floating point")
        self._set_inputs(x1, x2)
        self._output = output
        self.buffers = dict(model.named_buffers())
        # calling the model itself is safe when no module in training mode owns buffers (which
        # it might update); Problem.params are the model's own parameters, detached
        self._direct = not any(
            m.training and any(True for _ in m.buffers(recurse=False)) for m in model.modules()
        )
        self.probe, self.probe_distinct = _probe(self.x1, self.x2)
        with torch.no_grad():
            reason = mixing_modules(model)
            self.structure, out, single = discover(self, self.probe, one_at_a_time=not reason)
            if not reason:
                if not _close(out, torch.cat([single, self.evaluate(self.params, self.probe[1:2])])):
                    reason = "the model's output on a batch differs from its outputs on single examples"
            if reason and deterministic and not _close(out, self.evaluate(self.params, self.probe)):
                raise NtkitError(
                    "the model's outputs differ between two calls with the same parameters and "
                    "inputs (e.g. Dropout in training mode): empirical kernels need a deterministic "
                    "model; call model.eval() first"
                )
        self.per_example, self.why_not_per_example = not reason, reason
        self._vmappable = None
        self.axes = OutputAxes(out.shape, trace_axes, diagonal_axes)
        self._check_batch_diagonal()
        self.output_shape = tuple(out.shape[1:])
        self._batch_output = out

    def _set_inputs(self, x1, x2) -> None:
        self.same_inputs = x2 is None or x2 is x1
        self.x1 = as_examples(x1, "x1", self.dtype, self.device)
        self.x2 = self.x1 if self.same_inputs else as_examples(x2, "x2", self.dtype, self.device)
        if self.x2.shape[1:] != self.x1.shape[1:]:
            raise NtkitError(
                f"x1 and x2 have different example shapes: {tuple(self.x1.shape)} and "
                f"{tuple(self.x2.shape)} (all axes but the first must agree)"
            )

    def _check_batch_diagonal(self) -> None:
        if self.axes.batch_diagonal and self.x1.shape[0] != self.x2.shape[0]:
            raise NtkitError(
                f"diagonal_axes contains the batch axis 0, which needs as many examples in x2 as in "
                f"x1; got {self.x1.shape[0]} and {self.x2.shape[0]}"
            )

    def with_inputs(self, x1, x2=None) -> "Problem":
        """The same analysis of the model, for new inputs of the same example shape and dtype,
        and for the model's parameters and buffers as they are now (a training step may have
        rebound a tensor's ``.data``, or put a new tensor under a buffer's name)."""
        new = copy.copy(self)
        named = dict(self.model.named_parameters())
        new.params = {name: named[name].detach() for name in self.params}
        new.buffers = dict(self.model.named_buffers())
        new._set_inputs(x1, x2)
        new._check_batch_diagonal()
        return new

    # -- the model as a function ---------------------------------------------------------------

    def function(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if params is self.params and self._direct:  # the model as it is: no parameter swapping
            with composite_kernels():
                return self.transform(self.model(x))
        # fresh copies: a module that updates its buffers (BatchNorm in training mode) must not
        # mutate tensors captured by a function transform, nor the model's own statistics
        buffers = {name: b.clone() for name, b in self.buffers.items()}
        with composite_kernels():
            out = functional_call(self.model, (params, buffers), (x,))
        return self.transform(out)

    def transform(self, out):
        return out if self._output is None else self._output(out)

    def evaluate(self, params, x: torch.Tensor) -> torch.Tensor:
        """``function`` with a check that the output is a batch of floating-point tensors."""
        return self.check_output(self.function(params, x), x)

    def check_output(self, out, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise NtkitError(
                f"the model returned {type(out).__name__}; empirical kernels need a single tensor "
                "output of shape (N, ...): wrap the model to return the output you want"
            )
        if out.ndim < 1 or out.shape[0] != x.shape[0] or not out.is_floating_point():
            raise NtkitError(
                f"the model maps inputs of shape {tuple(x.shape)} to {tuple(out.shape)} "
                f"({out.dtype}); expected a floating-point output with the batch axis first"
            )
        return out

    def single(self, params, x: torch.Tensor) -> torch.Tensor:
        """The output of one example ``x`` (without batch axis), run as a batch of one."""
        return self.function(params, x.unsqueeze(0)).squeeze(0)

    @property
    def vmappable(self) -> bool:
        if self._vmappable is None:
            self._vmappable = self.per_example
            if self.per_example:
                try:
                    with torch.no_grad():
                        each = vmap(lambda x: self.single(self.params, x), randomness="different")(self.probe)
                    self._vmappable = _close(self._batch_output, each)
                    reason = "its output under vmap differs"
                except Exception as error:  # an op without a batching rule, data-dependent control flow
                    self._vmappable, reason = False, str(error)
                if not self._vmappable:
                    self.why_not_per_example = (
                        f"the model does not run one example at a time under torch.func.vmap ({reason})"
                    )
        return self._vmappable

    @functools.cached_property
    def why_no_forward_mode(self) -> str:
        """Empty when forward-mode derivatives (``torch.func.jvp``) run through the model, else
        why not (an operation without a forward-mode formula, such as ``EmbeddingBag``)."""
        tangents = {name: torch.ones_like(p) for name, p in self.params.items()}
        try:
            with torch.no_grad():
                jvp(lambda p: self.function(p, self.probe), (dict(self.params),), (tangents,))
        except Exception as error:  # NotImplementedError from a missing formula, and others
            return f"forward-mode derivatives (torch.func.jvp) do not run through the model ({error})"
        return ""

    # -- sizes -----------------------------------------------------------------------------

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


def mixing_modules(model: nn.Module) -> str:
    """Why the model's examples are not independent, judging by its modules; empty if they are."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or not module.track_running_stats):
            return f"{name or 'model'} ({type(module).__name__}) normalizes over the batch (use model.eval())"
    return ""
