"""Losses of function-space gradient descent, by name, in neural-tangents' normalization.

Each loss is a mean over every output of every training example (``y.numel()`` terms), so that
the learning rate means the same thing for every loss and every number of outputs, and ``"mse"``
is the loss whose dynamics :func:`gradient_descent_mse` solves in closed form.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._errors import NtkitError


def mse(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:math:`\\lVert f - y \\rVert^2 / (2 N)` with :math:`N` = ``y.numel()``."""
    return (f - y).square().sum() / (2 * y.numel())


def cross_entropy(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:math:`-\\sum_{i,c} y_{ic} \\log \\operatorname{softmax}(f_i)_c / N` with :math:`N` =
    ``y.numel()``: softmax over the last axis, targets ``y`` probabilities (e.g. one-hot).

    This is the normalization of neural-tangents' example (``-mean(log_softmax(f) * y)``);
    ``torch.nn.functional.cross_entropy`` averages over examples only, i.e. it is larger by the
    number of classes.
    """
    return -(y * torch.log_softmax(f, dim=-1)).sum() / y.numel()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": mse,
    "cross_entropy": cross_entropy,
}


def get_loss(loss, where: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A loss function from a name in ``LOSSES`` or a callable ``loss(f, y) -> scalar``."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise NtkitError(f"{where}: unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass a function loss(f, y)")
        return LOSSES[loss]
    if not callable(loss):
        raise NtkitError(f"{where}: loss must be a name in {sorted(LOSSES)} or a function loss(f, y), got {type(loss).__name__}")
    return loss
