"""The ``ntkit demo`` job: finite networks trained in PyTorch approach their infinite-width limit.

On a bundled dataset (the scikit-learn digits by default), one-hidden-layer ReLU networks of
several widths, in the NTK parameterization, are trained by full-batch gradient descent on the
squared error of neural-tangents, ``||f(X) - Y||^2 / (2 Y.numel())``, twice from the same
initialization: all layers (whose infinite-width limit is the NTK dynamics) and the readout layer
only (the NNGP dynamics). Beside them, ``ntkit.predict`` gives the same training in closed form at
infinite width: the test loss and accuracy expected over initializations, and, for each finite
network, the outputs of the infinitely wide network started from the same initial function.
The distance between the two shrinks as ``width**-1/2`` (Lee et al. 2019, Theorem 2.1). Each
network trained in all layers is also trained as its linearization in the parameters
(``ntkit.linearize``), and the distance between the two is reported: the part of the network's
training that is not kernel dynamics.

Writes a figure (PNG), the curves (CSV) and a summary (JSON), and returns a ``DemoResult``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from . import predict
from ._errors import NtkitError
from .empirical import linearize
from .datasets import DATASETS, Dataset, load_dataset
from .layers import Dense, ReLU, Serial, serial

DEFAULT_WIDTHS = (64, 256, 1024, 4096)
QUICK_WIDTHS = (64, 256, 1024)
DEFAULT_STEPS = 1000
QUICK_STEPS = 300
W_STD = math.sqrt(2.0)  # He initialization: ReLU layers keep the signal's variance
B_STD = 0.1
READOUT_W_STD, READOUT_B_STD = W_STD, B_STD
ACTIVATION = ReLU
LR_FRACTION = 0.5  # of the largest stable learning rate: the top kernel mode is learned in one step
CHECKPOINTS = 40  # log-spaced evaluation steps
REGIMES = ("ntk", "nngp")  # all layers trained / readout only
FIGURE, TABLE, SUMMARY = "finite_vs_infinite.png", "finite_vs_infinite.csv", "finite_vs_infinite.json"


class Curves(NamedTuple):
    """Test loss and accuracy at each checkpoint (arrays of the checkpoints' length)."""

    loss: np.ndarray
    accuracy: np.ndarray


class DemoResult(NamedTuple):
    """What ``run`` computed and where it wrote it.

    Attributes
    ----------
    dataset : str
    n_train, n_test, n_classes : int
    widths : tuple of int
    steps : ndarray of int
        The checkpoints (gradient-descent steps) at which test outputs were evaluated.
    learning_rate : float
    finite : dict
        ``finite[regime][width]``: the :class:`Curves` of the network trained in PyTorch, for
        ``regime`` "ntk" (all layers trained) and "nngp" (readout only).
    infinite : dict
        ``infinite[regime]``: the curves of an infinitely wide network, in expectation over
        initializations (closed form).
    distance : dict
        ``distance[regime]``, shape (len(widths), len(steps)): the root-mean-square difference
        between the test outputs of the finite network and those of the infinitely wide network
        started from the same initial outputs, at each checkpoint.
    slope : dict
        ``slope[regime]``, shape (len(steps),): the least-squares slope of log distance against
        log width at each checkpoint (NaN at step 0, where the distance is 0).
    linear_gap : ndarray, shape (len(widths), len(steps))
        The root-mean-square difference between the test outputs of each network trained in all
        layers and those of its linearization (``ntkit.linearize``) trained the same way from
        the same initialization.
    seconds : float
    figure, table, summary : Path
    """

    dataset: str
    n_train: int
    n_test: int
    n_classes: int
    widths: tuple[int, ...]
    steps: np.ndarray
    learning_rate: float
    finite: dict
    infinite: dict
    distance: dict
    slope: dict
    linear_gap: np.ndarray
    seconds: float
    figure: Path
    table: Path
    summary: Path


def mlp(width: int, outputs: int) -> Serial:
    """``serial(serial(Dense(width), ReLU()), Dense(outputs))``: the hidden block first, so that
    ``net[0]`` gives the features the readout ``net[1]`` is trained on."""
    hidden = serial(Dense(width, W_std=W_STD, b_std=B_STD), ACTIVATION())
    return serial(hidden, Dense(outputs, W_std=READOUT_W_STD, b_std=READOUT_B_STD))


def checkpoints(steps: int, count: int = CHECKPOINTS) -> np.ndarray:
    """0 and about ``count`` log-spaced whole steps up to ``steps``."""
    return np.unique(np.concatenate([[0], np.round(np.geomspace(1, steps, count))])).astype(int)


def train(
    net: Serial, data: Dataset, learning_rate: float, steps: np.ndarray, readout_only: bool, bar=None,
    linearized: bool = False,
):
    """Full-batch gradient descent in PyTorch (float32), ``p -= learning_rate * grad``, of the
    network, its readout only, or (``linearized``) its linearization in all parameters.

    Returns ``(f0_train, f0_test, test_outputs)`` in float64: the initial outputs and the test
    outputs at each of ``steps``, shape (len(steps), n_test, outputs).
    """
    x_train, x_test, y = (a.float() for a in (data.x_train, data.x_test, data.y_train))
    model = linearize(net) if linearized else net
    if readout_only:
        with torch.no_grad():
            x_train, x_test = net[0](x_train), net[0](x_test)  # fixed features
        model = net[1]
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    wanted = set(steps.tolist())
    outputs = []
    with torch.no_grad():
        f0_train = model(x_train).double()
    for step in range(int(steps[-1]) + 1):
        if step in wanted:
            with torch.no_grad():
                outputs.append(model(x_test).double())
        if step == steps[-1]:
            break
        optimizer.zero_grad(set_to_none=True)
        loss = (model(x_train) - y).square().sum() / (2 * y.numel())
        loss.backward()
        optimizer.step()
        if bar is not None:
            bar.update(1)
    return f0_train, outputs[0], torch.stack(outputs)


def expected_accuracy(mean: torch.Tensor, variance: torch.Tensor, labels: torch.Tensor, nodes: int = 48) -> np.ndarray:
    """Accuracy of one random network of the infinite ensemble, averaged over initializations.

    At infinite width the outputs at a test input are independent Gaussians
    :math:`\\mathcal N(\\mu_c, s^2)` with a common variance, so the probability that the right
    class :math:`l` scores highest is :math:`\\int \\phi(z) \\prod_{c \\ne l}
    \\Phi\\big((\\mu_l - \\mu_c)/s + z\\big)\\, dz`, computed by Gauss-Hermite quadrature.

    ``mean`` (T, m, C), ``variance`` (T, m); returns (T,).
    """
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    z = torch.as_tensor(z, dtype=mean.dtype)
    w = torch.as_tensor(w / math.sqrt(2 * math.pi), dtype=mean.dtype)
    index = labels.to(mean.device)[None, :, None].expand(mean.shape[0], -1, 1)
    right = mean.gather(-1, index)  # (T, m, 1)
    scale = variance.clamp(min=1e-300).sqrt()[..., None]
    gap = ((right - mean) / scale)[..., None] + z  # (T, m, C, nodes)
    cdf = torch.special.ndtr(gap)
    cdf = cdf.scatter(-2, index[..., None].expand(-1, -1, 1, z.shape[0]), 1.0)  # c = l: factor 1
    probability = (cdf.prod(-2) * w).sum(-1)  # (T, m)
    return probability.mean(-1).cpu().numpy()


def _curves(outputs: torch.Tensor, data: Dataset) -> Curves:
    loss = (outputs - data.y_test).square().sum((-1, -2)) / (2 * data.y_test.numel())
    accuracy = (outputs.argmax(-1) == data.labels_test).double().mean(-1)
    return Curves(loss.numpy(), accuracy.numpy())


def run(
    out: str | Path = "ntkit-demo",
    dataset: str = "digits",
    widths: Sequence[int] = DEFAULT_WIDTHS,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Train finite networks of each width, compute their infinite-width limit, write the results.

    Parameters
    ----------
    out : path
        Directory for the figure, the CSV curves and the JSON summary (created).
    dataset : str
        One of :data:`ntkit.datasets.DATASETS`.
    widths : sequence of int
        Hidden widths of the finite networks (at least two, for the slope).
    steps : int
        Gradient-descent steps, at half the largest stable learning rate of the infinite-width NTK.
    seed : int
        Seeds the split of the data and the initializations.
    progress : bool
        Show a progress bar over training steps.
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or min(widths) < 1 or len(set(widths)) != len(widths):
        raise NtkitError(f"demo: widths must be at least two distinct positive integers, got {widths!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise NtkitError(f"demo: steps must be a positive integer, got {steps!r}")
    if dataset not in DATASETS:
        raise NtkitError(f"demo: unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(dataset, seed=seed)
    grid = checkpoints(steps)
    n_train = data.x_train.shape[0]
    # The kernels of all inputs at once: they do not depend on the width.
    k = mlp(1, data.y_train.shape[1]).kernel(torch.cat([data.x_train, data.x_test]))
    learning_rate = LR_FRACTION * predict.max_learning_rate(k.ntk[:n_train, :n_train], data.y_train.numel())
    infinite = _infinite_curves(k, data, learning_rate, grid)
    finite, distance, linear_gap = _train_and_compare(k, data, learning_rate, grid, widths, seed, progress)
    slope = {
        regime: np.array([np.polyfit(np.log(widths), np.log(d), 1)[0] if s > 0 else np.nan
                          for s, d in zip(grid, distance[regime].T)])
        for regime in REGIMES
    }
    result = DemoResult(
        dataset, n_train, data.x_test.shape[0], data.y_train.shape[1], widths, grid, learning_rate, finite, infinite,
        distance, slope, linear_gap, time.perf_counter() - start, out / FIGURE, out / TABLE, out / SUMMARY,
    )
    _write_table(result)
    _write_summary(result)
    plot(result)
    return result


def _infinite_curves(k, data: Dataset, learning_rate: float, grid: np.ndarray) -> dict:
    """Expected test loss and accuracy of an infinitely wide network at every checkpoint."""
    n_train, n_test = data.x_train.shape[0], data.x_test.shape[0]
    ensemble = predict.gradient_descent_mse_ensemble(
        precomputed(k), torch.arange(n_train), data.y_train, learning_rate, discrete=True
    )
    test = torch.arange(n_train, n_train + n_test)
    t = torch.as_tensor(grid, dtype=torch.float64)
    curves = {}
    for regime in REGIMES:
        mean, cov = ensemble(test, t=t, get=regime, compute_cov=True)
        variance = cov.diagonal(dim1=-2, dim2=-1)
        # E||f - y||^2 = ||mu - y||^2 + C tr(Sigma): each of the C outputs has covariance Sigma.
        squared = (mean - data.y_test).square().sum((-1, -2)) + data.y_test.shape[1] * variance.sum(-1)
        loss = squared / (2 * data.y_test.numel())
        curves[regime] = Curves(loss.numpy(), expected_accuracy(mean, variance, data.labels_test))
    return curves


def _train_and_compare(k, data: Dataset, learning_rate, grid, widths, seed, progress):
    """Train each width twice from one initialization; compare each network with the infinitely
    wide network started from the same initial outputs. Returns the curves and the distances,
    ``distance[regime]`` of shape (len(widths), len(grid))."""
    n_train = data.x_train.shape[0]
    single = {
        regime: predict.gradient_descent_mse(
            getattr(k, regime)[:n_train, :n_train], data.y_train, learning_rate, discrete=True
        )
        for regime in REGIMES
    }
    t = torch.as_tensor(grid, dtype=torch.float64)
    finite = {regime: {} for regime in REGIMES}
    distance = {regime: np.zeros((len(widths), len(grid))) for regime in REGIMES}
    linear_gap = np.zeros((len(widths), len(grid)))
    total = 3 * len(widths) * int(grid[-1])
    with tqdm(total=total, desc="ntkit demo: training", unit="step", disable=not progress) as bar:
        for i, width in enumerate(widths):
            torch.manual_seed(seed * 100_003 + width)
            base = mlp(width, data.y_train.shape[1])
            base(data.x_train[:1].float())  # materialize the lazy layers
            for regime in REGIMES:
                bar.set_postfix_str(f"width {width}, {LABELS[regime]}")
                f0_train, f0_test, trained = train(
                    copy.deepcopy(base), data, learning_rate, grid, readout_only=regime == "nngp", bar=bar
                )
                finite[regime][width] = _curves(trained, data)
                cross = getattr(k, regime)[n_train:, :n_train]
                limit = single[regime](t, f0_train, f0_test, cross).test
                distance[regime][i] = (trained - limit).square().mean((-1, -2)).sqrt().numpy()
                if regime == "ntk":
                    bar.set_postfix_str(f"width {width}, linearized")
                    _, _, linear = train(copy.deepcopy(base), data, learning_rate, grid, False, bar, linearized=True)
                    linear_gap[i] = (trained - linear).square().mean((-1, -2)).sqrt().numpy()
    return finite, distance, linear_gap


class _Kernels(NamedTuple):
    nngp: torch.Tensor
    ntk: torch.Tensor


def precomputed(k) -> callable:
    """A ``kernel_fn(i, j, get)`` for ``ntkit.predict`` that slices the kernels ``k`` of a fixed
    set of inputs: the "inputs" are index tensors into that set."""
    def kernel_fn(i: torch.Tensor, j: torch.Tensor | None, get) -> _Kernels:
        j = i if j is None else j
        return _Kernels(k.nngp[i][:, j], k.ntk[i][:, j])

    return kernel_fn


# -- reporting ------------------------------------------------------------------------------------

LABELS = {"ntk": "all layers trained", "nngp": "readout only"}
EARLY_STEP = 30  # the figure and table also show the distance after about this many steps


def _early(result: DemoResult) -> int:
    """Index of the checkpoint closest to EARLY_STEP (in log scale), at least step 1."""
    steps = result.steps.astype(float)
    return int(np.argmin(np.abs(np.log(np.maximum(steps, 0.5)) - np.log(EARLY_STEP))))


def format_table(result: DemoResult) -> str:
    """Loss, accuracy and distance to the infinite-width network at the last step, per width."""
    lines = [f"{'width':>7}  " + "  ".join(f"{LABELS[r] + ': loss':>24} {'acc':>6} {'distance':>9}" for r in REGIMES)]
    for i, width in enumerate(result.widths):
        cells = [
            f"{result.finite[r][width].loss[-1]:>24.4f} {result.finite[r][width].accuracy[-1]:>6.1%} "
            f"{result.distance[r][i, -1]:>9.4f}"
            for r in REGIMES
        ]
        lines.append(f"{width:>7d}  " + "  ".join(cells))
    cells = [f"{result.infinite[r].loss[-1]:>24.4f} {result.infinite[r].accuracy[-1]:>6.1%} {'0':>9}" for r in REGIMES]
    lines.append(f"{'inf':>7}  " + "  ".join(cells) + "   (expected over initializations)")
    early, last = _early(result), len(result.steps) - 1
    slopes = ", ".join(
        f"{LABELS[r]} {result.slope[r][early]:+.2f} / {result.slope[r][last]:+.2f}" for r in REGIMES
    )
    lines.append(
        f"distance ~ width^slope after {result.steps[early]} / {result.steps[last]} steps: {slopes} "
        "(theory: -0.50 as width -> infinity)"
    )
    gaps = ", ".join(f"{w} {g:.4f}" for w, g in zip(result.widths, result.linear_gap[:, last]))
    lines.append(
        f"network vs its linearization (all layers, step {result.steps[last]}): {gaps}; "
        f"slope {_slope(result.widths, result.linear_gap[:, last]):+.2f}"
    )
    return "\n".join(lines)


def _slope(widths, distances) -> float:
    """Least-squares slope of log distance against log width."""
    return float(np.polyfit(np.log(np.asarray(widths, dtype=float)), np.log(distances), 1)[0])


def _write_table(result: DemoResult) -> None:
    lines = ["regime,width,step,test_loss,test_accuracy,distance_to_infinite_width,distance_to_linearization"]
    for regime in REGIMES:
        for i, width in enumerate(result.widths):
            curves = result.finite[regime][width]
            for j, step in enumerate(result.steps):
                # readout-only training is already linear in its parameters: no gap
                gap = result.linear_gap[i, j] if regime == "ntk" else 0.0
                lines.append(
                    f"{regime},{width},{step},{curves.loss[j]:.6g},{curves.accuracy[j]:.6g},"
                    f"{result.distance[regime][i, j]:.6g},{gap:.6g}"
                )
        curves = result.infinite[regime]
        for j, step in enumerate(result.steps):
            lines.append(f"{regime},inf,{step},{curves.loss[j]:.6g},{curves.accuracy[j]:.6g},0,0")
    result.table.write_text("\n".join(lines) + "\n")


def _write_summary(result: DemoResult) -> None:
    def final(curves: Curves) -> dict:
        return {"test_loss": float(curves.loss[-1]), "test_accuracy": float(curves.accuracy[-1])}

    early = _early(result)
    summary = {
        "dataset": result.dataset,
        "n_train": result.n_train,
        "n_test": result.n_test,
        "architecture": f"Dense(width, W_std={W_STD:.6g}, b_std={B_STD}) -> {ACTIVATION.__name__} -> "
        f"Dense(outputs, W_std={READOUT_W_STD:.6g}, b_std={READOUT_B_STD}), NTK parameterization",
        "loss": "||f - y||^2 / (2 y.numel()), full-batch gradient descent, float32",
        "learning_rate": result.learning_rate,
        "steps": int(result.steps[-1]),
        "widths": list(result.widths),
        "final": {
            r: {**{str(w): final(result.finite[r][w]) for w in result.widths}, "inf": final(result.infinite[r])}
            for r in REGIMES
        },
        "distance_to_infinite_width": {
            r: {str(w): float(result.distance[r][i, -1]) for i, w in enumerate(result.widths)} for r in REGIMES
        },
        "distance_to_linearization": {str(w): float(result.linear_gap[i, -1]) for i, w in enumerate(result.widths)},
        "linearization_slope": {
            f"step {result.steps[early]}": float(_slope(result.widths, result.linear_gap[:, early])),
            f"step {result.steps[-1]}": float(_slope(result.widths, result.linear_gap[:, -1])),
        },
        "distance_slope": {
            r: {f"step {result.steps[early]}": float(result.slope[r][early]),
                f"step {result.steps[-1]}": float(result.slope[r][-1])}
            for r in REGIMES
        },
        "seconds": result.seconds,
    }
    result.summary.write_text(json.dumps(summary, indent=2) + "\n")


def plot(result: DemoResult) -> Path:
    """The figure: loss and accuracy against steps per width with the infinite-width curves, for
    both regimes, and the distance to the infinite-width network against width."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, NullLocator, PercentFormatter
    except ImportError as error:
        raise ImportError("the ntkit demo draws with matplotlib: pip install ntkit[demo]") from error

    fig = Figure(figsize=(15, 7.6), dpi=150, layout="constrained")  # Agg canvas, no pyplot state
    grid = fig.add_gridspec(2, 3, width_ratios=(1, 1, 1.1))
    cmap = matplotlib.colormaps["viridis"]
    colors = [cmap(0.85 - 0.75 * i / max(len(result.widths) - 1, 1)) for i in range(len(result.widths))]
    steps = result.steps[1:]  # the log axis starts at step 1
    chance = 100 / result.n_classes
    for col, regime in enumerate(REGIMES):
        loss_ax = fig.add_subplot(grid[0, col])
        acc_ax = fig.add_subplot(grid[1, col], sharex=loss_ax)
        for color, width in zip(colors, result.widths):
            curves = result.finite[regime][width]
            loss_ax.plot(steps, curves.loss[1:], color=color, lw=1.7, label=f"width {width}")
            acc_ax.plot(steps, 100 * curves.accuracy[1:], color=color, lw=1.7)
        limit = result.infinite[regime]
        style = dict(color="black", lw=2.4, ls=(0, (4, 2)))
        loss_ax.plot(steps, limit.loss[1:], label="infinite width\n(ntkit.predict)", **style)
        acc_ax.plot(steps, 100 * limit.accuracy[1:], **style)
        acc_ax.axhline(chance, color="0.6", lw=1, ls=":")
        kernel = "NTK" if regime == "ntk" else "NNGP"
        loss_ax.set_title(f"{LABELS[regime].capitalize()}  \u2192  {kernel} dynamics", fontsize=13, fontweight="bold")
        loss_ax.set_xscale("log")
        loss_ax.set_yscale("log")
        loss_ax.set_ylabel("test loss  $\\|f - y\\|^2 / 2N$")
        acc_ax.set_ylabel(f"test accuracy ({result.n_test} examples)")
        acc_ax.set_xlabel(f"gradient-descent steps (learning rate {result.learning_rate:.3g})")
        acc_ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        acc_ax.set_ylim(0, 100)
        for ax in (loss_ax, acc_ax):
            ax.grid(True, which="major", alpha=0.3)
        if col == 0:
            loss_ax.legend(frameon=False, fontsize=9, loc="lower left")
    _plot_distance(fig.add_subplot(grid[:, 2]), result, FixedLocator, NullLocator)
    fig.text(  # titles as plain text: the layout engine keeps the rectangle below them for the axes
        0.5, 0.995,
        "Finite networks trained by gradient descent in PyTorch approach the infinite-width closed form",
        ha="center", va="top", fontsize=15, fontweight="bold",
    )
    fig.text(
        0.5, 0.95,
        f"{result.dataset}: {result.n_train} training / {result.n_test} test examples.  "
        f"Dense(width) \u2192 {ACTIVATION.__name__} \u2192 Dense in the NTK parameterization, "
        f"$\\sigma_w^2 = {W_STD**2:.3g}$, $\\sigma_b = {B_STD}$; one network per width, full-batch "
        "gradient descent on $\\|f - y\\|^2 / 2N$ in float32.\nDashed: the same training at "
        "infinite width in closed form (ntkit.predict), expected over initializations.",
        ha="center", va="top", fontsize=10.5, color="0.3", linespacing=1.5,
    )
    fig.get_layout_engine().set(rect=(0, 0, 1, 0.885))
    fig.savefig(result.figure)
    return result.figure


def _plot_distance(ax, result: DemoResult, FixedLocator, NullLocator) -> None:
    """Distance to the infinite-width network against width, log-log, with fitted slopes."""
    widths = np.asarray(result.widths, dtype=float)
    early, last = _early(result), len(result.steps) - 1
    series = (
        ("ntk", early, "o", "tab:red", "--", False),
        ("ntk", last, "o", "tab:red", "-", True),
        ("nngp", early, "s", "tab:blue", "--", False),
        ("nngp", last, "s", "tab:blue", "-", True),
    )
    for regime, j, marker, color, line, filled in series:
        d = result.distance[regime][:, j]
        fit = np.polyfit(np.log(widths), np.log(d), 1)
        ax.plot(widths, d, marker=marker, ms=8, ls="none", color=color, mfc=color if filled else "white", mew=1.6)
        ax.plot(widths, np.exp(np.polyval(fit, np.log(widths))), color=color, lw=1.5, ls=line,
                label=f"{LABELS[regime]}, step {result.steps[j]}: slope {fit[0]:+.2f}")
    gap = result.linear_gap[:, last]
    fit = np.polyfit(np.log(widths), np.log(gap), 1)
    ax.plot(widths, gap, marker="D", ms=7, ls="none", color="tab:green")
    ax.plot(widths, np.exp(np.polyval(fit, np.log(widths))), color="tab:green", lw=1.5,
            label=f"network vs its linearization, step {result.steps[last]}: slope {fit[0]:+.2f}")
    top = np.max([result.distance[r][:, [early, last]].max(1) for r in REGIMES], axis=0)
    anchor = 1.2 * np.exp(np.mean(np.log(top) + 0.5 * np.log(widths)))  # a guide above the points
    ax.plot(widths, anchor * widths**-0.5, color="0.5", ls=":", lw=1.8, label="$\\propto$ width$^{-1/2}$ (theory)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(widths))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(w) for w in result.widths])
    ax.set_xlabel("width of the hidden layer")
    ax.set_ylabel("RMS distance of the test outputs")
    ax.set_title("Distance to the infinite-width network\nstarted from the same initial function",
                 fontsize=13, fontweight="bold")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(frameon=False, fontsize=9.5, loc="lower left")
