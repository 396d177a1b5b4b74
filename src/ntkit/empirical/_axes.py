"""Which output axes of a model a kernel traces over, takes the diagonal of, or keeps.

The conventions are neural-tangents' (``empirical_kernel_fn``): an axis of the model's
output ``f(x)`` of shape ``(N, *S)`` is either *traced* (the kernel is averaged over equal
pairs of that axis, so that it is comparable with ntkit's per-unit analytic kernel),
*diagonal* (one index shared by both sides), or *kept* (a pair of axes, one per side). The
batch axis 0 cannot be traced; made diagonal it gives :math:`\\Theta(x_i, x'_i)`.

Internally every implementation works on outputs reshaped to ``(N, Dg, K, T)``: the diagonal,
kept and traced axes flattened in that order. It returns ``(N1, N2, Dg, K, K)`` (or
``(N, Dg, K, K)`` with a diagonal batch axis), averaged over ``T``, and :meth:`layout` puts
the axes where neural-tangents puts them: for each untraced axis in order, one axis if it is
diagonal, two (side 1, side 2) if it is kept.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch

from .._errors import NtkitError


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _canonical(axes, ndim: int, argument: str, shape: str) -> tuple[int, ...]:
    given = axes
    if _is_int(axes):
        axes = (axes,)
    axes = tuple(axes) if isinstance(axes, Iterable) and not isinstance(axes, str) else None
    if axes is None or not all(_is_int(a) for a in axes):  # not "1", 1.5 or True
        raise NtkitError(f"{argument} must be an int or a tuple of ints, got {given!r}")
    axes = tuple(int(a) for a in axes)
    bad = [a for a in axes if not -ndim <= a < ndim]
    if bad:
        raise NtkitError(
            f"{argument}={axes} does not fit the model's output of shape {shape} (axes must be in "
            f"[{-ndim}, {ndim})); pick axes of the output, e.g. trace_axes=(-1,) for the logits"
        )
    canonical = tuple(sorted(a % ndim for a in axes))
    if len(set(canonical)) != len(canonical):
        raise NtkitError(f"{argument}={axes} names an axis twice (output shape {shape})")
    return canonical


class OutputAxes:
    """The split of a model's output axes into diagonal, kept and traced ones.

    Parameters
    ----------
    output_shape : tuple of int
        Shape of the model's output on a batch, ``(N, *S)``; only ``S`` is used.
    trace_axes, diagonal_axes : int or sequence of int
        As in :func:`ntkit.empirical_ntk`; negative axes count from the end.
    """

    def __init__(self, output_shape: Sequence[int], trace_axes=(-1,), diagonal_axes=()):
        shape = tuple(int(s) for s in output_shape)
        ndim = len(shape)
        shown = "(" + ", ".join(["N", *map(str, shape[1:])]) + (",)" if ndim == 1 else ")")  # for errors
        trace = _canonical(trace_axes, ndim, "trace_axes", shown)
        diagonal = _canonical(diagonal_axes, ndim, "diagonal_axes", shown)
        both = set(trace) & set(diagonal)
        if both:
            raise NtkitError(f"axis {sorted(both)} is in both trace_axes={trace} and diagonal_axes={diagonal}")
        if 0 in trace and ndim == 1:
            raise NtkitError(
                f"trace_axes={trace_axes} names the batch axis: the model's output {shown} has no "
                "other axis to trace; pass trace_axes=() for the kernel of its single output"
            )
        if 0 in trace:
            raise NtkitError(
                "trace_axes contains the batch axis 0, which cannot be traced; use "
                "diagonal_axes=(0,) for the kernel of each example with itself"
            )
        self.example_shape = shape[1:]
        self.batch_diagonal = 0 in diagonal
        self.diagonal = tuple(a for a in diagonal if a)
        self.traced = trace
        self.kept = tuple(a for a in range(1, ndim) if a not in trace and a not in diagonal)
        size = lambda axes: math.prod(shape[a] for a in axes)  # noqa: E731
        self.Dg, self.K, self.T = size(self.diagonal), size(self.kept), size(self.traced)
        # per-example axes (0-based within S) in the order (diagonal, kept, traced)
        self.permutation = tuple(a - 1 for a in self.diagonal + self.kept + self.traced)

    @property
    def n_outputs(self) -> int:
        """O = Dg * K * T, the number of output units of one example."""
        return self.Dg * self.K * self.T

    @property
    def n_pairs(self) -> int:
        """Number of (unit, unit') pairs the kernel needs per pair of examples: Dg * K^2 * T."""
        return self.Dg * self.K * self.K * self.T

    def split(self, y: torch.Tensor, lead: int = 1) -> torch.Tensor:
        """``y`` of shape ``(*lead_axes, *S, *rest)`` as ``(*lead_axes, Dg, K, T, prod(rest))``."""
        s = len(self.example_shape)
        head, rest = y.shape[:lead], y.shape[lead + s :]
        order = tuple(range(lead)) + tuple(lead + a for a in self.permutation)
        order += tuple(range(lead + s, y.ndim))
        return y.permute(order).reshape(*head, self.Dg, self.K, self.T, math.prod(rest))

    def basis(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The O one-hot cotangents, shape ``(O, *S)``, ordered as ``(Dg, K, T)`` row-major."""
        permuted = tuple(self.example_shape[a] for a in self.permutation)
        eye = torch.eye(self.n_outputs, dtype=dtype, device=device).reshape(self.n_outputs, *permuted)
        inverse = [0] * len(self.permutation)
        for position, axis in enumerate(self.permutation):
            inverse[axis] = position
        return eye.permute(0, *(1 + p for p in inverse))

    def layout(self, r: torch.Tensor) -> torch.Tensor:
        """``(N1, N2, Dg, K, K)`` (or ``(N, Dg, K, K)``) in neural-tangents' axis order."""
        batch = 1 if self.batch_diagonal else 2
        size = {a: self.example_shape[a - 1] for a in range(1, len(self.example_shape) + 1)}
        dims = [size[a] for a in self.diagonal] + [size[a] for a in self.kept] * 2
        r = r.reshape(*r.shape[:batch], *dims)
        where = {a: batch + i for i, a in enumerate(self.diagonal)}
        first = {a: batch + len(self.diagonal) + i for i, a in enumerate(self.kept)}
        second = {a: batch + len(self.diagonal) + len(self.kept) + i for i, a in enumerate(self.kept)}
        order = list(range(batch))
        for a in sorted(self.diagonal + self.kept):
            order += [where[a]] if a in where else [first[a], second[a]]
        return r.permute(order)

    def transpose(self, r: torch.Tensor) -> torch.Tensor:
        """The block of ``(x2, x1)`` from the one of ``(x1, x2)``: swap examples and kept units."""
        return r.permute(1, 0, 2, 4, 3)
