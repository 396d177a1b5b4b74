"""The ``ntkit demo`` job: how deep should an infinitely wide ReLU network be to classify digits?

For each depth, the NNGP and the NTK of a ReLU MLP are computed on the scikit-learn digits
(1000 training and 797 test images), used for kernel regression on centred one-hot targets,
and scored by test accuracy. The result is a table, a CSV file and a figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ._errors import NtkitError
from ._kernel_regression import kernel_regression
from .datasets import Dataset, load_digits
from .layers import Dense, ReLU, Serial, serial

DEFAULT_DEPTHS = tuple(range(1, 9))
QUICK_DEPTHS = (1, 2)
WIDTH = 512  # the finite network's width; the kernels do not depend on it
W_STD = math.sqrt(2.0)  # He initialization: ReLU layers then keep the signal's variance
B_STD = 0.1
DIAG_REG = 1e-4
FIGURE = "accuracy_vs_depth.png"
TABLE = "accuracy_vs_depth.csv"


class DemoResult(NamedTuple):
    """What ``run`` computed and where it wrote it.

    Attributes
    ----------
    depths : tuple of int
        Numbers of hidden layers.
    nngp_accuracy, ntk_accuracy : tuple of float
        Test accuracy (fraction of test images classified right) at each depth.
    kernel_seconds : tuple of float
        Time to compute both kernels of the 1797 x 1797 train+test set at each depth.
    n_train, n_test : int
    figure, table : Path
        The PNG figure and the CSV table.
    """

    depths: tuple[int, ...]
    nngp_accuracy: tuple[float, ...]
    ntk_accuracy: tuple[float, ...]
    kernel_seconds: tuple[float, ...]
    n_train: int
    n_test: int
    figure: Path
    table: Path


def relu_mlp(depth: int, out_features: int = 10) -> Serial:
    """``depth`` hidden layers ``Dense(512, W_std=sqrt(2), b_std=0.1) -> ReLU``, then a readout."""
    hidden = []
    for _ in range(depth):
        hidden += [Dense(WIDTH, W_std=W_STD, b_std=B_STD), ReLU()]
    return serial(*hidden, Dense(out_features, W_std=W_STD, b_std=B_STD))


def accuracies(
    data: Dataset, depth: int, diag_reg: float = DIAG_REG
) -> tuple[float, float, float]:
    """``(nngp_accuracy, ntk_accuracy, kernel_seconds)`` of kernel regression at one depth.

    Both kernels of the train and test inputs together come from one symmetric call
    (``x2=None`` computes each pair once); the train-train and test-train blocks are slices.
    """
    n_train = data.x_train.shape[0]
    x = torch.cat([data.x_train, data.x_test])
    start = time.perf_counter()
    k = relu_mlp(depth, data.y_train.shape[1]).kernel(x, dtype=torch.float64, progress=False)
    seconds = time.perf_counter() - start
    scores = []
    for matrix in (k.nngp, k.ntk):
        prediction = kernel_regression(
            matrix[:n_train, :n_train], matrix[n_train:, :n_train], data.y_train, diag_reg
        )
        scores.append((prediction.argmax(dim=1) == data.labels_test).double().mean().item())
    return scores[0], scores[1], seconds


def run(
    out: str | Path = "ntkit-demo",
    depths: Sequence[int] = DEFAULT_DEPTHS,
    diag_reg: float = DIAG_REG,
    progress: bool = True,
) -> DemoResult:
    """Accuracy of NNGP and NTK regression on digits against depth; writes a figure and a CSV.

    Parameters
    ----------
    out : path
        Directory for ``accuracy_vs_depth.png`` and ``accuracy_vs_depth.csv`` (created).
    depths : sequence of int
        Numbers of hidden layers to try (0 is the linear kernel of the readout alone).
    diag_reg : float
        Ridge, relative to the mean of the kernel's diagonal (see ``kernel_regression``).
    progress : bool
        Show a progress bar over depths.
    """
    depths = tuple(int(d) for d in depths)
    if not depths or min(depths) < 0:
        raise NtkitError(f"demo: depths must be integers >= 0, got {depths!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_digits()
    rows = []
    for depth in tqdm(depths, desc="ntkit demo: depth", unit="net", disable=not progress):
        rows.append(accuracies(data, depth, diag_reg))
    nngp, ntk, seconds = (tuple(column) for column in zip(*rows))
    result = DemoResult(
        depths, nngp, ntk, seconds, data.x_train.shape[0], data.x_test.shape[0],
        figure=out / FIGURE, table=out / TABLE,
    )
    _write_table(result)
    plot(result, diag_reg)
    return result


def format_table(result: DemoResult) -> str:
    """The accuracies as a fixed-width text table, one row per depth."""
    lines = [f"{'hidden layers':>13}  {'NNGP acc':>8}  {'NTK acc':>8}  {'kernels (s)':>11}"]
    columns = (result.depths, result.nngp_accuracy, result.ntk_accuracy, result.kernel_seconds)
    for depth, a, b, s in zip(*columns):
        lines.append(f"{depth:>13d}  {a:>8.4f}  {b:>8.4f}  {s:>11.3f}")
    return "\n".join(lines)


def _write_table(result: DemoResult) -> None:
    lines = ["depth,nngp_accuracy,ntk_accuracy,kernel_seconds"]
    columns = (result.depths, result.nngp_accuracy, result.ntk_accuracy, result.kernel_seconds)
    for depth, a, b, s in zip(*columns):
        lines.append(f"{depth},{a:.6f},{b:.6f},{s:.4f}")
    result.table.write_text("\n".join(lines) + "\n")


def plot(result: DemoResult, diag_reg: float = DIAG_REG) -> Path:
    """Draw test accuracy against depth for both kernels into ``result.figure`` (PNG)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator, PercentFormatter
    except ImportError as error:
        raise ImportError("the ntkit demo draws with matplotlib: pip install ntkit[demo]") from error

    fig = Figure(figsize=(6.4, 4.4), dpi=150, layout="constrained")  # Agg canvas, no pyplot state
    ax = fig.add_subplot()
    curves = (  # NNGP drawn larger, so that equal values show both markers
        (result.nngp_accuracy, "NNGP (Bayesian posterior mean)", "o", 9, "tab:blue"),
        (result.ntk_accuracy, "NTK (gradient descent, $t \\to \\infty$)", "s", 5, "tab:orange"),
    )
    for values, label, marker, size, color in curves:
        y = [100 * v for v in values]
        ax.plot(result.depths, y, label=label, marker=marker, markersize=size, color=color, linewidth=2)
    low = 100 * min(result.nngp_accuracy + result.ntk_accuracy)
    ax.set_ylim(min(low - 0.5, 98.0), 100.0)  # at least 2 points, one test image being 0.13
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=None))
    if len(result.depths) <= 12:
        ax.set_xticks(result.depths)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("hidden layers (Dense + ReLU)")
    ax.set_ylabel(f"test accuracy ({result.n_test} images)")
    fig.suptitle("Digits by kernel regression with infinitely wide ReLU networks", fontsize=11)
    ax.set_title(
        f"{result.n_train} training images;  $\\sigma_w^2 = 2$, $\\sigma_b = {B_STD}$;  "
        f"ridge {diag_reg:g} $\\times$ mean diag $K$",
        fontsize=8, color="0.35",
    )
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, frameon=False, fontsize=9)
    fig.savefig(result.figure)
    return result.figure
