"""``empirical_ntk``: the neural tangent kernel of any ``torch.nn.Module`` at its parameters."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .._errors import NtkitError
from ._blocks import assemble, chunk_size, resolve_budget
from ._problem import Problem
from ._registry import make_implementation


def empirical_ntk(
    model: torch.nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    implementation: str = "auto",
    trace_axes=(-1,),
    diagonal_axes=(),
    params=None,
    batch_size: int | None = None,
    memory_budget: float | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Empirical neural tangent kernel :math:`\\Theta = J(x_1) J(x_2)^\\top` of a finite network.

    .. math::
        \\Theta(x, x')_{oo'} = \\sum_p \\frac{\\partial f_o(x; \\theta)}{\\partial \\theta_p}
        \\frac{\\partial f_{o'}(x'; \\theta)}{\\partial \\theta_p}

    (Jacot et al. 2018, eq. 6), at the model's current parameters :math:`\\theta`: the kernel of
    gradient descent with learning rate 1 on those parameters. Traced output axes are
    *averaged* over, as in neural-tangents, so that with the default ``trace_axes=(-1,)`` the
    kernel of a network ending in ``Dense(10)`` is directly comparable with ntkit's per-unit
    analytic ``net.kernel(x1, x2).ntk``.

    Parameters
    ----------
    model : torch.nn.Module
        Any module mapping a batch ``(N, ...)`` to a tensor ``(N, *S)``, with its buffers
        (e.g. BatchNorm statistics) used as they are. It must be deterministic (``model.eval()``
        for Dropout) and materialized (run lazy modules such as ntkit's ``Dense`` once).
    x1 : Tensor, shape (N1, ...)
        First batch. Floating inputs are cast to the parameters' dtype and device; integer
        inputs (token ids) are kept.
    x2 : Tensor, shape (N2, ...), optional
        Second batch, with the same example shape; None means ``x1`` (half the work, and an
        exactly symmetric result).
    implementation : "auto", "structured", "jacobian_contraction" or "ntk_vector_products"
        How the kernel is computed; all give the same kernel up to round-off.

        - ``"jacobian_contraction"``: per-example Jacobians by ``torch.func.jacrev``, then
          :math:`J_1 J_2^\\top`. Cost :math:`N O\\,[\\mathrm{FP}] + N_1 N_2 O P` (O output
          units, P parameters, FP one forward pass); memory :math:`N O P`.
        - ``"ntk_vector_products"``: columns :math:`J_1 (J_2^\\top v)` by a vjp then a jvp,
          never storing a Jacobian. Cost :math:`N_1 N_2 O\\,[\\mathrm{FP}]`; best when
          :math:`O P` is large relative to a forward pass or Jacobians do not fit in memory.
        - ``"structured"``: Linear, Conv1d/2d/3d and ntkit ``Dense`` layers through their
          inputs and cotangents, :math:`(a_1 a_2^\\top) \\circ (g_1 g_2^\\top)` (through patches
          for convolutions), the affine parameters of BatchNorm (eval mode), GroupNorm and
          LayerNorm through their normalized inputs, other modules' parameters by autodiff. Cost
          :math:`N O\\,[\\mathrm{FP}]` plus small Gram matrices: the fastest for networks made
          mostly of such layers. Needs a model that treats examples independently.
        - ``"auto"``: the cheapest by a cost estimate from the model's sizes (see
          ``ntkit.empirical._registry``); in practice ``"structured"`` whenever it applies.

        Costs are those of Novak et al. 2022, "Fast finite width neural tangent kernel",
        Table 1.
    trace_axes : int or tuple of int
        Output axes averaged over (the diagonal of each pair of such axes, then the mean).
        Default ``(-1,)``: the logits. ``()`` keeps every output pair.
    diagonal_axes : int or tuple of int
        Output axes whose pairs are restricted to equal indices (one axis in the result);
        ``0`` (the batch axis) gives :math:`\\Theta(x_{1,i}, x_{2,i})`, shape ``(N, ...)``.
    params : None, a submodule, a parameter name, a Parameter, or a list of them
        The parameters :math:`\\theta` to differentiate (e.g. ``model.fc`` for the last layer
        only); None means every parameter with ``requires_grad``. The others stay fixed.
    batch_size : int, optional
        Examples per chunk; by default as many as the memory budget allows.
    memory_budget : float, optional
        Approximate working memory in bytes. Default: half the free memory of a GPU, a
        quarter of the available memory (at most 4 GiB) on the CPU.
    progress : bool, optional
        Show a progress bar over blocks; None shows one for 16 blocks or more on a terminal.

    Returns
    -------
    Tensor
        In the model's dtype and device. Shape: ``(N1, N2)`` followed, for each output axis
        that is not traced, by one axis if it is diagonal and two (x1's, x2's) otherwise: e.g.
        ``(N1, N2)`` for logits traced, ``(N1, N2, O, O)`` with ``trace_axes=()``.

    Notes
    -----
    The model runs on chunks of examples; a model whose output on one example depends on the
    others in its batch (BatchNorm in training mode) then has a kernel that depends on the
    chunking, exactly as with neural-tangents' batching.

    References
    ----------
    Jacot, Gabriel, Hongler 2018, "Neural tangent kernel", eq. 6. Novak, Sohl-Dickstein,
    Schoenholz 2022, "Fast finite width neural tangent kernel", Sec. 3-4 and Table 1.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    >>> ntkit.empirical_ntk(model, torch.randn(5, 3)).shape
    torch.Size([5, 5])
    """
    return EmpiricalNtkFn(
        model, implementation=implementation, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
        params=params, batch_size=batch_size, memory_budget=memory_budget, progress=progress,
    )(x1, x2)


class EmpiricalNtkFn:
    """``empirical_ntk`` of one model as a function of the inputs, analysed once per input shape.

    Built by :func:`ntkit.empirical_ntk_fn`. The first call for an example shape, dtype and
    device runs the checks and the structure discovery of ``empirical_ntk`` (a few forward
    passes on two examples); later calls reuse them, as a ``jax.jit``-compiled neural-tangents
    function reuses its trace, and are cheaper for small models. The analysis is redone when a
    module changes mode (``train()``/``eval()``), a parameter is replaced by another tensor or
    frozen or unfrozen (``requires_grad``, which selects the parameters when ``params=None``);
    parameter *values* may change freely (e.g. to follow the NTK during training). Changes
    that such a check cannot see (a Python flag that changes the forward pass) need a new
    function.
    """

    def __init__(self, model, *, implementation="auto", trace_axes=(-1,), diagonal_axes=(), params=None,
                 batch_size=None, memory_budget=None, progress=None):
        if not isinstance(model, torch.nn.Module):
            raise NtkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(params, Iterator):  # e.g. model.fc.parameters(): each analysis reads it
            params = list(params)
        self.model, self.implementation, self.params = model, implementation, params
        self.trace_axes, self.diagonal_axes = trace_axes, diagonal_axes
        self.batch_size, self.memory_budget, self.progress = batch_size, memory_budget, progress
        self._analyses = {}

    def _key(self, x1, x2) -> tuple:
        modules = tuple(m.training for m in self.model.modules())
        tensors = tuple((id(p), p.requires_grad, p.dtype, p.device) for p in self.model.parameters())
        shape = tuple(x1.shape[1:]) if isinstance(x1, torch.Tensor) else None
        return shape, getattr(x1, "dtype", None), getattr(x1, "device", None), x2 is None or x2 is x1, modules, tensors

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        """The empirical NTK between ``x1`` and ``x2`` (see :func:`ntkit.empirical_ntk`)."""
        with torch.no_grad():
            key = self._key(x1, x2)
            cached = self._analyses.get(key)
            if cached is not None and not cached.probe_distinct and _examples(x1, x2) > 1:
                cached = None  # analysed on equal examples only: whether they mix was not seen
            if cached is not None:
                problem = cached.with_inputs(x1, x2)
            else:
                problem = Problem(self.model, x1, x2, params=self.params, trace_axes=self.trace_axes,
                                  diagonal_axes=self.diagonal_axes)
                self._analyses[key] = problem
            budget = resolve_budget(self.memory_budget, problem.device)
            chosen = make_implementation(self.implementation, problem, problem.structure, budget)
            n = max(problem.x1.shape[0], problem.x2.shape[0])
            per_example = chosen.bytes_per_example()
            chunk = chunk_size(per_example, self.batch_size, budget, n, f"implementation={chosen.name!r}")
            block = assemble(
                lambda x: chosen.features(problem.params, x),
                chosen.contract,
                problem.x1,
                problem.x2,
                problem.same_inputs,
                problem.axes.batch_diagonal,
                chunk,
                transpose=problem.axes.transpose,
                cache_columns=problem.x2.shape[0] * chosen.bytes_kept_per_example() <= budget / 2,
                progress=self.progress,
                desc=f"empirical NTK ({chosen.name})",
            )
        return problem.axes.layout(block)


def _examples(x1, x2) -> int:
    """Examples in the two batches (``x2 = None`` or ``x1`` counted once)."""
    batches = [x1] if x2 is None or x2 is x1 else [x1, x2]
    return sum(x.shape[0] for x in batches if isinstance(x, torch.Tensor) and x.ndim)


def empirical_ntk_fn(
    model: torch.nn.Module,
    *,
    implementation: str = "auto",
    trace_axes=(-1,),
    diagonal_axes=(),
    params=None,
    batch_size: int | None = None,
    memory_budget: float | None = None,
    progress: bool | None = None,
) -> EmpiricalNtkFn:
    """:func:`ntkit.empirical_ntk` as a function ``ntk_fn(x1, x2=None)`` that analyses the model
    once per input shape (as neural-tangents' ``empirical_ntk_fn`` under ``jax.jit``).

    The arguments are those of :func:`ntkit.empirical_ntk`. Use it to compute many kernels of
    one model, e.g. to follow the empirical NTK during training: parameter values may change
    between calls; see :class:`EmpiricalNtkFn` for what triggers a new analysis.

    Examples
    --------
    >>> ntk_fn = ntkit.empirical_ntk_fn(model)
    >>> for step in range(steps):
    ...     train_step(model)
    ...     kernels.append(ntk_fn(x_probe))
    """
    return EmpiricalNtkFn(
        model, implementation=implementation, trace_axes=trace_axes, diagonal_axes=diagonal_axes, params=params,
        batch_size=batch_size, memory_budget=memory_budget, progress=progress,
    )
