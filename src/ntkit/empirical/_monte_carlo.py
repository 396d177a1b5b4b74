"""``monte_carlo_kernel``: an ntkit network's kernels estimated from sampled finite networks."""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from .._errors import NtkitError
from ._axes import OutputAxes
from ._base import contract_jacobians
from ._blocks import resolve_budget
from ._problem import Problem, mixing_modules, as_examples, composite_kernels, materialize
from ._registry import make_implementation


class MonteCarloKernel(NamedTuple):
    """Monte Carlo estimates of a network's kernels and their standard errors.

    Attributes
    ----------
    nngp, ntk : Tensor or None
        Averages over the sampled networks of the empirical NNGP and NTK, shape (N1, N2) for
        outputs (N, C) (see :func:`ntkit.monte_carlo_kernel`); None when not asked for.
    nngp_se, ntk_se : Tensor or None
        Their standard errors: the sample standard deviation over networks divided by
        :math:`\\sqrt{S}`.
    n_samples : int
        The number S of sampled networks.
    """

    nngp: torch.Tensor | None
    nngp_se: torch.Tensor | None
    ntk: torch.Tensor | None
    ntk_se: torch.Tensor | None
    n_samples: int


def _wanted(get) -> tuple[bool, bool]:
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(g not in ("nngp", "ntk") for g in names):
        raise NtkitError(f"get must name 'nngp' and/or 'ntk', got {get!r}")
    return "nngp" in names, "ntk" in names


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    """Evaluation mode for a while (to check the structure of a network with Dropout)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class _Moments:
    """Running mean and sum of squared deviations over samples, merged batch by batch (Chan et
    al. 1979), in float64 so that a constant entry has an exactly zero spread."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, batch: torch.Tensor) -> None:
        batch = batch.double()
        n, mean = batch.shape[0], batch.mean(0)
        m2 = ((batch - mean) ** 2).sum(0)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def result(self, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        se = (self.m2 / (self.count - 1)).sqrt() / math.sqrt(self.count)
        return self.mean.to(dtype), se.to(dtype)


def monte_carlo_kernel(
    net: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    n_samples: int = 64,
    get: str | Sequence[str] = ("nngp", "ntk"),
    seed: int = 0,
    ntk_outputs: int | None = None,
    dtype: torch.dtype = torch.float64,
    implementation: str = "auto",
    batch_size: int | None = None,
    memory_budget: float | None = None,
    progress: bool | None = None,
) -> MonteCarloKernel:
    """Average empirical NNGP and NTK of ``n_samples`` independently initialised copies of a network.

    For copies :math:`s = 1..S` of ``net`` with parameters drawn by its layers'
    ``reset_parameters`` (the initialization of the chosen parameterization),

    .. math::
        \\hat K = \\frac1S \\sum_s \\frac1C \\sum_c f^s_c(x_1) f^s_c(x_2), \\qquad
        \\hat\\Theta = \\frac1S \\sum_s \\frac1C \\sum_c \\nabla_\\theta f^s_c(x_1) \\cdot
        \\nabla_\\theta f^s_c(x_2),

    averaged over the output channels ``c`` (axis 1), with standard errors
    :math:`\\mathrm{sd}_s / \\sqrt S`. As the width grows the average converges to the analytic
    ``net.kernel(x1, x2)`` (Neal 1994; Lee et al. 2018; Jacot et al. 2018), with a bias of
    order 1/width; the standard error lets a comparison be honest about the sampling part.
    The copies are computed together under ``torch.func.vmap``, in batches of copies that fit
    the memory budget; the NTK of each copy is computed as by :func:`ntkit.empirical_ntk`.
    Dropout layers in training mode draw a new mask for every copy and example (one mask per
    example, shared by its pairs with itself when ``x2`` is None), as their kernel assumes.

    Parameters
    ----------
    net : torch.nn.Module
        An ntkit network (or any module whose parameter-owning submodules have
        ``reset_parameters``); it is copied, not modified. Outputs ``(N, C, ...)``. Buffers
        (BatchNorm's running statistics, in eval mode) are not drawn: every copy uses ``net``'s.
    x1 : Tensor, shape (N1, ...)
    x2 : Tensor, shape (N2, ...), optional
        None means ``x1`` (and the same dropout masks for an example with itself).
    n_samples : int
        Number of sampled networks S (>= 2); the standard error falls as :math:`1/\\sqrt S`.
    get : "nngp", "ntk" or both
    seed : int
        Seed of the initializations (and, separately, of dropout masks): the same seed gives
        the same networks in any dtype and however the copies are batched (dropout masks can
        depend on the batching). The global random state is left untouched.
    ntk_outputs : int, optional
        Average the NTK over the first ``ntk_outputs`` channels only: the cost of the NTK is
        proportional to the channels used, and every channel has the same distribution, so the
        estimate stays unbiased (with a somewhat larger standard error). Default: all.
    dtype : torch.dtype
        Precision of the networks and the estimates (float64 by default, as ``kernel``).
    implementation : str
        The ``empirical_ntk`` implementation for each copy's NTK (default "auto").
    batch_size : int, optional
        Copies per vectorized batch; by default as many as fit the memory budget.
    memory_budget : float, optional
        Approximate working memory in bytes (default as :func:`ntkit.empirical_ntk`).
    progress : bool, optional
        Progress bar over batches of copies.

    Returns
    -------
    MonteCarloKernel
        ``(nngp, nngp_se, ntk, ntk_se, n_samples)``; tensors of shape (N1, N2) for outputs
        ``(N, C)``, with a pair of axes for each further output axis (as ``empirical_ntk``
        with ``trace_axes=(1,)``).

    Notes
    -----
    Cost: S forward passes for the NNGP, and S empirical NTKs (see :func:`ntkit.empirical_ntk`;
    for Dense networks about ``N C`` backward passes each). The whole (N1, N2) kernel of each
    copy in a batch is held in memory.

    References
    ----------
    Novak et al. 2020, "Neural Tangents", ``nt.monte_carlo_kernel_fn``; Jacot et al. 2018,
    eq. 6 (the NTK of one network); Lee et al. 2018, eq. 4 (the NNGP).
    """
    devices = [x1.device] if isinstance(x1, torch.Tensor) and x1.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the caller's random state stays as it was
        return _monte_carlo_kernel(net, x1, x2, n_samples, get, seed, ntk_outputs, dtype, implementation,
                                   batch_size, memory_budget, progress)


def _monte_carlo_kernel(net, x1, x2, n_samples, get, seed, ntk_outputs, dtype, implementation, batch_size,
                        memory_budget, progress) -> MonteCarloKernel:
    want_nngp, want_ntk = _wanted(get)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise NtkitError(f"n_samples must be an integer >= 2 (for a standard error), got {n_samples!r}")
    if ntk_outputs is not None and (isinstance(ntk_outputs, bool) or not isinstance(ntk_outputs, int) or ntk_outputs < 1):
        raise NtkitError(f"ntk_outputs must be a positive integer or None, got {ntk_outputs!r}")
    if not isinstance(net, nn.Module):
        raise NtkitError(f"net must be a torch.nn.Module (an ntkit network), got {type(net).__name__}")
    template, x1, x2, same = _prepare(net, x1, x2, dtype)
    with torch.no_grad():
        out = functional_call(template, {}, (x1[:1],))
    if not isinstance(out, torch.Tensor) or out.ndim < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise NtkitError(f"net maps x1 to {shape}; monte_carlo_kernel needs outputs (N, channels, ...)")
    channels = min(ntk_outputs or out.shape[1], out.shape[1])
    with _eval_mode(template):  # structure and per-example checks without dropout's randomness
        problem = Problem(
            template, x1, None if same else x2, trace_axes=(1,), deterministic=False,
            output=None if channels == out.shape[1] else (lambda y: y[:, :channels]),
        )
    budget = resolve_budget(memory_budget, problem.device)
    chosen = make_implementation(implementation, problem, problem.structure, budget) if want_ntk else None
    if chosen is not None:
        chosen.functional = True  # it runs under vmap over networks: torch.func transforms only
    nngp_axes = OutputAxes(out.shape, (1,), ())

    def one_network(params):
        result = []
        if want_nngp:
            with composite_kernels():
                y1 = functional_call(template, (params, problem.buffers), (x1,))
                y2 = y1 if same else functional_call(template, (params, problem.buffers), (x2,))
            result.append(contract_jacobians(nngp_axes.split(y1), nngp_axes.split(y2)) / nngp_axes.T)
        if want_ntk:
            f1 = chosen.features(params, x1)
            result.append(chosen.contract(f1, f1 if same else chosen.features(params, x2)))
        if same:  # exactly symmetric, as empirical_ntk's
            result = [(k + problem.axes.transpose(k)) / 2 for k in result]
        return tuple(result)

    per_copy = _bytes_per_copy(problem, chosen, out)
    copies = _copies_per_batch(per_copy, batch_size, budget, n_samples)
    moments = [_Moments() for _ in range(want_nngp + want_ntk)]
    # networks are drawn in float64 from one random stream and dropout masks from another, so
    # that a seed gives the same networks in any dtype and however the copies are batched
    sampler = copy.deepcopy(template).double()
    resettable = _resettable(sampler)
    networks, masks = _Stream(seed, x1.device), _Stream(seed + 1, x1.device)
    starts = range(0, n_samples, copies)
    with torch.no_grad():
        for start in tqdm(starts, desc="Monte Carlo networks", disable=_quiet(progress, len(starts))):
            with networks:
                draws = [_draw(sampler, resettable) for _ in range(min(copies, n_samples - start))]
            stacked = {name: torch.stack([d[name] for d in draws]).to(dtype) for name in draws[0]}
            with masks:
                batches = vmap(one_network, randomness="different")(stacked)
            for moment, batch in zip(moments, batches):
                moment.add(batch)
    results = [m.result(dtype) for m in moments]
    nngp = results.pop(0) if want_nngp else (None, None)
    ntk = results.pop(0) if want_ntk else (None, None)
    return MonteCarloKernel(
        None if nngp[0] is None else nngp_axes.layout(nngp[0]),
        None if nngp[1] is None else nngp_axes.layout(nngp[1]),
        None if ntk[0] is None else problem.axes.layout(ntk[0]),
        None if ntk[1] is None else problem.axes.layout(ntk[1]),
        n_samples,
    )


class _Stream:
    """A random stream of its own: entering it swaps in its generator state, leaving saves it."""

    def __init__(self, seed: int, device: torch.device):
        self.devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            self.state = self._get()

    def _get(self):
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.devices]

    def _set(self, state):
        torch.set_rng_state(state[0])
        for device, cuda_state in zip(self.devices, state[1]):
            torch.cuda.set_rng_state(cuda_state, device)

    def __enter__(self):
        self.outside = self._get()
        self._set(self.state)

    def __exit__(self, *exc):
        self.state = self._get()
        self._set(self.outside)


def _prepare(net, x1, x2, dtype):
    """A private, materialized copy of ``net`` in ``dtype``, and the checked inputs."""
    if dtype not in (torch.float32, torch.float64):
        raise NtkitError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    same = x2 is None or x2 is x1
    device = x1.device if isinstance(x1, torch.Tensor) else torch.device("cpu")
    x1 = as_examples(x1, "x1", dtype, device)
    x2 = x1 if same else as_examples(x2, "x2", dtype, device)
    if x2.shape[1:] != x1.shape[1:]:
        raise NtkitError(f"x1 and x2 have different example shapes: {tuple(x1.shape)} and {tuple(x2.shape)}")
    mixing = mixing_modules(net)
    if mixing:
        raise NtkitError(f"monte_carlo_kernel needs a network that treats examples independently: {mixing}")
    template = copy.deepcopy(net).to(device=device, dtype=dtype)
    materialize(template, x1)
    if not any(True for _ in template.parameters()):
        raise NtkitError("net has no parameters: there is nothing to sample")
    return template, x1, x2, same


def _resettable(template: nn.Module) -> list[nn.Module]:
    owners = [m for m in template.modules() if any(True for _ in m.parameters(recurse=False))]
    for module in owners:
        if not hasattr(module, "reset_parameters"):
            raise NtkitError(
                f"{type(module).__name__} owns parameters but has no reset_parameters(), so "
                "monte_carlo_kernel cannot draw new initializations of it"
            )
    return owners


def _draw(template: nn.Module, resettable: list[nn.Module]) -> dict[str, torch.Tensor]:
    for module in resettable:
        module.reset_parameters()
    return {name: p.detach().clone() for name, p in template.named_parameters()}


def _bytes_per_copy(problem: Problem, chosen, out: torch.Tensor) -> float:
    n1, n2 = problem.x1.shape[0], problem.x2.shape[0]
    examples = n1 + (0 if problem.same_inputs else n2)
    elements = 3 * problem.n_params + 4 * n1 * n2 * problem.axes.n_pairs + 2 * examples * out[0].numel()
    total = problem.itemsize * elements
    if chosen is not None:
        total += examples * chosen.bytes_per_example()
    return total


def _copies_per_batch(per_copy: float, batch_size, budget: float, n_samples: int) -> int:
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise NtkitError(f"batch_size (copies per batch) must be a positive integer, got {batch_size!r}")
        return min(int(batch_size), n_samples)
    if per_copy > budget:
        raise NtkitError(
            f"memory_budget={budget:.4g} bytes is smaller than the ~{per_copy:.3g} bytes that one "
            "network's kernels need; raise memory_budget, use fewer examples, or pass ntk_outputs"
        )
    return int(max(1, min(n_samples, budget // per_copy)))


def _quiet(progress, n: int):
    if progress is None:
        return None if n >= 16 else True
    return not progress
