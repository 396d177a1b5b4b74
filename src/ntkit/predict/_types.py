"""What the predictors return: declared named tuples, and the reshaping they share."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Gaussian(NamedTuple):
    """Mean and covariance of the outputs over random initializations (or of a GP posterior).

    Attributes
    ----------
    mean : Tensor, shape (*t_shape, N, outputs) or (*t_shape, N)
        The mean of every output (the trailing axis is absent when ``y_train`` was 1-D).
    covariance : Tensor, shape (*t_shape, N, N)
        The covariance between examples of one output; outputs are independent and identically
        distributed at infinite width, so it is the same for every output.
    """

    mean: torch.Tensor
    covariance: torch.Tensor


class TrainTest(NamedTuple):
    """Outputs of a trained network on the training and the test inputs.

    Attributes
    ----------
    train : Tensor, shape (*t_shape, n_train, outputs), or None
        None when they were not asked for (``fx_train_0=None``).
    test : Tensor, shape (*t_shape, n_test, outputs), or None
        None when no test kernel was given.
    """

    train: torch.Tensor | None
    test: torch.Tensor | None


def shape_outputs(x: torch.Tensor | None, t_shape: tuple[int, ...], was_1d: bool) -> torch.Tensor | None:
    """``(T, N, k)`` -> ``(*t_shape, N, k)``, dropping the output axis when ``y_train`` was 1-D."""
    if x is None:
        return None
    x = x.reshape(t_shape + tuple(x.shape[1:]))
    return x.squeeze(-1) if was_1d else x


def shape_covariance(c: torch.Tensor, t_shape: tuple[int, ...]) -> torch.Tensor:
    """``(T, N, N)`` -> ``(*t_shape, N, N)``, exactly symmetric."""
    c = (c + c.transpose(-1, -2)) / 2
    return c.reshape(t_shape + tuple(c.shape[1:]))
