"""Validation of what the predictors receive: kernels, targets, initial outputs, times, options.

Every check raises :class:`~ntkit.NtkitError` naming the function, the argument and the shape or
value at fault, with the remedy where there is one. The computation's dtype and device are those
of the train-train kernel; every other tensor is moved there.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .._errors import NtkitError

FLOAT_DTYPES = (torch.float64, torch.float32)
INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def as_tensor(value, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor of ``value``, detached: tensors and NumPy arrays keep their dtype, Python numbers
    and nested lists become ``dtype`` (float64 by default: ``torch.as_tensor`` would make float32,
    losing digits)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value)
    return torch.as_tensor(value, dtype=dtype or torch.float64)


def as_matrix(k, argument: str, where: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """``k`` as a finite floating 2-D tensor (float64 unless it already is float32/float64).

    With ``like``, the result takes ``like``'s dtype and device (the train-train kernel's).
    """
    try:
        k = as_tensor(k, None if like is None else like.dtype)
    except (TypeError, ValueError, RuntimeError):
        raise NtkitError(f"{where}: {argument} must be a tensor, got {type(k).__name__}") from None
    if k.ndim != 2:
        raise NtkitError(f"{where}: {argument} has shape {tuple(k.shape)}; expected a matrix (N1, N2)")
    if k.is_complex():
        raise NtkitError(f"{where}: {argument} has dtype {k.dtype}; expected a real tensor")
    if like is not None:
        k = k.to(dtype=like.dtype, device=like.device)
    elif k.dtype not in FLOAT_DTYPES:
        k = k.to(torch.float64)
    _check_finite(k, argument, where)
    return k


def check_square(k: torch.Tensor, argument: str, where: str) -> None:
    if k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise NtkitError(
            f"{where}: {argument} has shape {tuple(k.shape)}; expected a square (n, n) kernel "
            "between the training inputs and themselves"
        )


def as_targets(y, n: int, like: torch.Tensor, where: str) -> tuple[torch.Tensor, bool]:
    """``(y as (n, k), was_1d)``: targets in the kernel's dtype and device."""
    y = as_tensor(y, like.dtype)
    if y.ndim not in (1, 2) or y.shape[0] != n or y.numel() == 0:
        raise NtkitError(
            f"{where}: y_train has shape {tuple(y.shape)} but the train-train kernel has {n} rows; "
            f"expected ({n},) or ({n}, outputs)"
        )
    y = y.to(dtype=like.dtype, device=like.device)
    _check_finite(y, "y_train", where)
    return (y[:, None], True) if y.ndim == 1 else (y, False)


def as_outputs(f, shape: tuple[int, int], argument: str, like: torch.Tensor, where: str) -> torch.Tensor:
    """Initial outputs ``f`` (a scalar, or a tensor broadcastable to ``shape``) as a ``shape`` tensor."""
    f = as_tensor(f, like.dtype).to(dtype=like.dtype, device=like.device)
    if f.ndim == 1 and f.shape[0] == shape[0] and shape[1] == 1:
        f = f[:, None]  # (n,) outputs of a one-output network
    try:
        f = torch.broadcast_to(f, shape)
    except RuntimeError:
        raise NtkitError(
            f"{where}: {argument} has shape {tuple(f.shape)}; expected {shape} (or a scalar)"
        ) from None
    _check_finite(f, argument, where)
    return f


def check_cross(k: torch.Tensor, n: int, argument: str, where: str) -> None:
    """A test-train kernel must have one column per training example."""
    if k.shape[1] != n:
        raise NtkitError(
            f"{where}: {argument} has shape {tuple(k.shape)}; expected (n_test, {n}), one column "
            "per training example (pass the kernel between the test and the training inputs, "
            "in that order)"
        )


def is_real(value) -> bool:
    """A real number, Python's or NumPy's (``numbers.Real``), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_diag_reg(diag_reg, where: str) -> float:
    if not is_real(diag_reg) or not (
        math.isfinite(diag_reg) and diag_reg >= 0
    ):
        raise NtkitError(f"{where}: diag_reg must be a finite number >= 0, got {diag_reg!r}")
    return float(diag_reg)


def check_flag(value, argument: str, where: str) -> bool:
    """A bool option, not coerced: neural-tangents has ``trace_axes`` where ntkit has
    ``discrete``, and ``bool((-1,))`` is True."""
    if not isinstance(value, (bool, np.bool_)):
        raise NtkitError(f"{where}: {argument} must be True or False, got {value!r}")
    return bool(value)


def check_learning_rate(learning_rate, where: str) -> float:
    if not is_real(learning_rate) or not (
        math.isfinite(learning_rate) and learning_rate > 0
    ):
        raise NtkitError(f"{where}: learning_rate must be a finite number > 0, got {learning_rate!r}")
    return float(learning_rate)


def as_times(t, like: torch.Tensor, where: str, integer: bool = False) -> torch.Tensor:
    """Training times (any shape) as a finite, non-negative tensor of the kernel's dtype."""
    original = t
    try:
        t = as_tensor(t)
    except (TypeError, ValueError, RuntimeError):
        raise NtkitError(f"{where}: t must be a number, a tensor of times or None, got {t!r}") from None
    if not (t.is_floating_point() or t.dtype in INTEGER_DTYPES):  # not complex, bool, ...
        raise NtkitError(f"{where}: t has dtype {t.dtype}; expected real times")
    t = t.to(dtype=torch.float64, device=like.device)
    if t.numel() == 0:
        raise NtkitError(f"{where}: t is empty (shape {tuple(t.shape)}); pass at least one time")
    bad = ~torch.isfinite(t) | (t < 0)
    if bool(bad.any()):
        value = t[bad].flatten()[0].item()
        hint = " (t=None means the end of training)" if value == math.inf else ""
        raise NtkitError(
            f"{where}: t must be finite and >= 0, got {value!r}{_at(bad, original)}{hint}"
        )
    if integer and bool((t != t.round()).any()):
        value = t[t != t.round()].flatten()[0].item()
        raise NtkitError(
            f"{where}: with discrete=True, t counts gradient-descent steps and must be a whole "
            f"number, got {value!r}{_at(t != t.round(), original)}"
        )
    return t.to(like.dtype)


def _at(mask: torch.Tensor, original) -> str:
    if mask.ndim == 0:
        return ""
    index = tuple(int(i) for i in mask.nonzero()[0])
    return f" at index {index if len(index) > 1 else index[0]}"


def _check_finite(x: torch.Tensor, argument: str, where: str) -> None:
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        index = tuple(int(i) for i in (~finite).nonzero()[0])
        raise NtkitError(
            f"{where}: {argument} contains NaN or inf (first at index {index}, value "
            f"{x[index].item()!r})"
        )
