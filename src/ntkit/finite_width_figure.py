"""The ``ntkit finite-width`` figure: the 1/n correction removes the leading finite-width error.

For a deep tanh (or GELU) MLP in the NTK parameterization and a few inputs, the mean kernels of
width-n networks at initialization differ from the infinite-width ones by (Roberts, Yaida &
Hanin 2022, §4.5 and §8.3)

.. math::
    \\mathbb E[\\hat K_n] - K = \\frac{K^1}{n} + O(n^{-2}), \\qquad
    \\mathbb E[\\hat\\Theta_n] - \\Theta = \\frac{\\Theta^1}{n} + O(n^{-2}).

``run`` measures the left-hand sides by Monte Carlo over independent networks drawn with the exact
sampler :func:`ntkit.finite_width.sample_kernels`, and plots against width, on log-log axes, the
relative error of the infinite-width kernel, :math:`\\|\\bar K_n - K\\|_F / \\|K\\|_F` (slope -1,
and on the no-fit line :math:`\\|K^1\\|_F / (n \\|K\\|_F)`), and that of the corrected kernel,
:math:`\\|\\bar K_n - K - K^1/n\\|_F / \\|K\\|_F` (slope -2), with standard errors; the same for
the NTK. Writes a figure (PNG) and the numbers (JSON), and returns a :class:`FigureResult`.

Statistics. With M networks the mean :math:`\\bar K_n` carries noise
:math:`\\varepsilon` of covariance :math:`C = \\Sigma/M` (Σ the covariance of the kernel's
entries over networks, estimated from the samples), so :math:`\\|d + \\varepsilon\\|^2` is biased
upwards by tr C. The error shown is debiased: :math:`\\hat e^2 = \\|\\bar K_n - \\mathrm{target}\\|^2
- \\mathrm{tr}\\, C`, unbiased for :math:`\\|d\\|^2`, with standard deviation
:math:`s = (4 d^\\top C d + 2\\,\\mathrm{tr}\\, C^2)^{1/2}` (Gaussian noise), hence standard error
:math:`s / 2\\hat e` for :math:`\\hat e`. A point is resolved when :math:`\\hat e^2 > 3s`; there
the relative standard error of :math:`\\hat e` is below 1/6, and slopes are weighted least-squares
fits of log error on log width over those points. The others are drawn as upper bounds,
:math:`(\\max(\\hat e^2, 0) + 2s)^{1/2}`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ._errors import NtkitError
from .finite_width import corrections, sample_kernels
from .layers import GELU, Dense, Serial, Tanh, serial

ACTIVATIONS = {"tanh": Tanh, "gelu": GELU}
# Dense layers (the 1/n corrections first appear at depth 3) and weight scales: tanh at its
# critical point; GELU at the He scale, where it is ReLU-like, its kernels fluctuate more and its
# corrections grow faster with depth, hence a shallower default.
DEFAULT_DEPTH = {"tanh": 8, "gelu": 4}
W_STD = {"tanh": 1.0, "gelu": math.sqrt(2.0)}
B_STD = 0.1
# The NTK's backward pass costs O(n^3) per network, the forward pass O(n): the NNGP kernel is
# measured on the networks sampled with their NTK plus NNGP_NETWORKS forward-only ones.
DEFAULT_WIDTHS = (8, 11, 16, 23, 32, 45, 64)
DEFAULT_NETWORKS = (100_000, 60_000, 25_000, 6_000, 2_000, 1_000, 600)
DEFAULT_NNGP_NETWORKS = (400_000, 400_000, 400_000, 200_000, 80_000, 40_000, 25_000)
QUICK_WIDTHS = (8, 16, 32)
QUICK_NETWORKS = (8_000, 3_000, 1_500)
QUICK_NNGP_NETWORKS = (80_000, 50_000, 30_000)
RESOLVED = 3.0  # a point is resolved (and fitted) when its squared error exceeds 3 of its s.d.
BATCHES = 8  # sampler calls per width (progress updates)
KERNELS = ("nngp", "ntk")
FIGURE, SUMMARY = "finite_width_corrections.png", "finite_width_corrections.json"


class Slope(NamedTuple):
    """A weighted least-squares fit ``log error = log a + slope * log width``."""

    slope: float
    se: float
    intercept: float
    points: int


class KernelErrors(NamedTuple):
    """The errors of one kernel (NNGP or NTK) against width, arrays of ``len(widths)``.

    Errors are relative, in the Frobenius norm over all pairs of inputs, and debiased (see the
    module docstring): 0 where the noise exceeds the measured deviation.

    Attributes
    ----------
    error, error_se, error_bound : ndarray
        :math:`\\|\\mathbb E\\hat K_n - K\\|_F / \\|K\\|_F` (the infinite-width kernel), its
        standard error (inf where the error reads 0), and an upper bound two standard
        deviations of the squared error above it.
    corrected, corrected_se, corrected_bound : ndarray
        The same for :math:`\\|\\mathbb E\\hat K_n - K - K^1/n\\|_F / \\|K\\|_F`.
    threshold : ndarray
        The smallest error resolvable with these networks (``RESOLVED`` standard deviations of
        the squared norm of pure noise).
    predicted : ndarray
        :math:`\\|K^1\\|_F / (n\\|K\\|_F)`, the leading error predicted by the theory (no fit).
    slope, corrected_slope : Slope
        Fits over the resolved points (NaN slope when fewer than two).
    resolved, corrected_resolved : ndarray of bool
        The squared error exceeds ``RESOLVED`` of its standard deviations.
    """

    error: np.ndarray
    error_se: np.ndarray
    error_bound: np.ndarray
    corrected: np.ndarray
    corrected_se: np.ndarray
    corrected_bound: np.ndarray
    threshold: np.ndarray
    predicted: np.ndarray
    slope: Slope
    corrected_slope: Slope
    resolved: np.ndarray
    corrected_resolved: np.ndarray


class FigureResult(NamedTuple):
    """What ``run`` measured and where it wrote it.

    ``nngp`` and ``ntk`` are :class:`KernelErrors`; ``inputs`` is the (N, d) tensor of inputs;
    ``nngp_networks`` and ``ntk_networks`` the numbers of networks each kernel's mean is over,
    per width.
    """

    activation: str
    depth: int
    widths: tuple[int, ...]
    nngp_networks: tuple[int, ...]
    ntk_networks: tuple[int, ...]
    inputs: torch.Tensor
    nngp: KernelErrors
    ntk: KernelErrors
    seconds: float
    figure: Path
    summary: Path


def network(width: int, activation: str = "tanh", depth: int | None = None) -> Serial:
    """``serial(Dense(width), act, ..., Dense(1))`` with ``depth`` Dense layers (default
    ``DEFAULT_DEPTH[activation]``), NTK parameterization, ``W_std = W_STD[activation]``, ``b_std = B_STD``."""
    depth = DEFAULT_DEPTH[activation] if depth is None else depth
    w_std = W_STD[activation]
    layers = []
    for _ in range(depth - 1):
        layers += [Dense(width, W_std=w_std, b_std=B_STD), ACTIVATIONS[activation]()]
    return serial(*layers, Dense(1, W_std=w_std, b_std=B_STD))


def inputs() -> torch.Tensor:
    """Four inputs in 3 dimensions on the sphere of radius sqrt(3) (|x|^2/d = 1), at angles
    from 34 to 137 degrees to one another: a small Gram matrix with distinct entries."""
    angles = torch.tensor([0.0, 0.6, 1.4, 2.4], dtype=torch.float64)
    x = torch.stack([angles.cos(), angles.sin(), torch.full_like(angles, 0.5)], 1)
    return x * (math.sqrt(3) / x.norm(dim=1, keepdim=True))


def run(
    out: str | Path = "ntkit-finite-width",
    activation: str = "tanh",
    depth: int | None = None,
    widths: Sequence[int] | None = None,
    n_networks: int | Sequence[int] | None = None,
    nngp_networks: int | Sequence[int] | None = None,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> FigureResult:
    """Measure the finite-width errors of the infinite-width and corrected kernels; plot and save them.

    Parameters
    ----------
    out : path
        Directory for the figure and the JSON numbers (created).
    activation : {"tanh", "gelu"}
    depth : int, optional
        Number of Dense layers L >= 3 (L - 1 hidden layers; default ``DEFAULT_DEPTH[activation]``);
        at L <= 2 the mean kernels are exact at every width.
    widths : sequence of int, optional
        Hidden widths, at least two distinct, each >= 2. Default ``DEFAULT_WIDTHS``
        (``QUICK_WIDTHS`` with ``quick``).
    n_networks : int or sequence of int, optional
        Networks sampled with both kernels per width (one number, or one per width), each >= 2.
        Default ``DEFAULT_NETWORKS`` (``QUICK_NETWORKS`` with ``quick``; with explicit
        ``widths``, the defaults' last entry at every width).
    nngp_networks : int or sequence of int, optional
        Further networks per width sampled forward only, for the NNGP kernel (>= 0). Default
        ``DEFAULT_NNGP_NETWORKS`` (``QUICK_NNGP_NETWORKS``), as ``n_networks``.
    quick : bool
        The quick defaults: a few seconds, and noisier.
    seed : int
        Seeds the sampler (the same arguments give the same numbers).
    progress : bool
        Show a progress bar over the sampled networks.

    Cost: O(L n^3 N) per network with the NTK, O(L n N^2) forward only; the defaults take
    about a minute on two cores, ``quick`` about ten seconds.
    """
    widths, counts, extra = _check_options(activation, depth, widths, n_networks, nngp_networks, quick)
    depth = DEFAULT_DEPTH[activation] if depth is None else depth
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x = inputs()
    theory = corrections(network(widths[0], activation, depth), x)
    samples = {kernel: [] for kernel in KERNELS}
    # Microseconds per network at depth 8 on two cores (measured): the NTK's backward pass grows
    # like n^3, the forward pass like n. Only the progress bar uses them.
    cost = [m * (70 + 2 * w + w**3 / 33) + e * (8 + 1.4 * w) for w, m, e in zip(widths, counts, extra)]
    with tqdm(total=sum(cost), disable=not progress, desc="sampling networks",
              bar_format="{l_bar}{bar}| {elapsed}<{remaining}") as bar:
        for width, count, more, weight in zip(widths, counts, extra, cost):
            net = network(width, activation, depth)
            step = weight / (count + more)
            nngp, ntk = _sample(net, x, count, (seed, width, 0), True, lambda done: bar.update(step * done))
            if more:
                forward, _ = _sample(net, x, more, (seed, width, 1), False, lambda done: bar.update(step * done))
                nngp = torch.cat([nngp, forward])
            samples["nngp"].append(nngp)
            samples["ntk"].append(ntk)
    nngp = _errors(samples["nngp"], theory.nngp, theory.nngp_correction, widths)
    ntk = _errors(samples["ntk"], theory.ntk, theory.ntk_correction, widths)
    totals = tuple(m + e for m, e in zip(counts, extra))
    result = FigureResult(activation, depth, widths, totals, counts, x, nngp, ntk, time.perf_counter() - start,
                          out / FIGURE, out / SUMMARY)
    plot(result)
    _write_summary(result)
    return result


def _check_options(activation, depth, widths, n_networks, nngp_networks, quick):
    if activation not in ACTIVATIONS:
        raise NtkitError(f"finite-width figure: unknown activation {activation!r}; choose one of {list(ACTIVATIONS)}")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 3):
        raise NtkitError(
            f"finite-width figure: depth must be an integer >= 3 (Dense layers; below 3 the mean kernels "
            f"have no 1/n correction), got {depth!r}"
        )
    defaults = (QUICK_NETWORKS, QUICK_NNGP_NETWORKS) if quick else (DEFAULT_NETWORKS, DEFAULT_NNGP_NETWORKS)
    if widths is None:
        widths = QUICK_WIDTHS if quick else DEFAULT_WIDTHS
    else:
        defaults = tuple(d[-1] for d in defaults)
    widths = tuple(widths)
    if (
        len(widths) < 2 or len(set(widths)) != len(widths)
        or any(isinstance(w, bool) or not isinstance(w, int) or w < 2 for w in widths)
    ):
        raise NtkitError(f"finite-width figure: widths must be at least two distinct integers >= 2, got {widths!r}")
    counts = []
    for name, given, default, least in (("n_networks", n_networks, defaults[0], 2),
                                        ("nngp_networks", nngp_networks, defaults[1], 0)):
        value = default if given is None else given
        value = (value,) * len(widths) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
        if len(value) != len(widths) or any(isinstance(m, bool) or not isinstance(m, int) or m < least for m in value):
            raise NtkitError(
                f"finite-width figure: {name} must be an integer >= {least} or one per width ({len(widths)}), "
                f"got {given!r}"
            )
        counts.append(value)
    order = np.argsort(widths)
    return tuple(tuple(seq[i] for i in order) for seq in (widths, *counts))


def _sample(net, x, count, key, ntk, advance):
    """(nngp, ntk) samples, each (count, N, N) (ntk None without ``ntk``), in ``BATCHES``
    sampler calls seeded from ``key`` and the batch's index."""
    nngp, ntks = [], []
    sizes = [len(part) for part in np.array_split(np.arange(count), min(BATCHES, count)) if len(part)]
    for index, size in enumerate(sizes):
        batch_seed = int(np.random.SeedSequence([*key, index]).generate_state(1)[0])
        samples = sample_kernels(net, x, n_networks=size, ntk=ntk, seed=batch_seed)
        nngp.append(samples.nngp)
        ntks.append(samples.ntk)
        advance(size)
    return torch.cat(nngp), (torch.cat(ntks) if ntk else None)


def _errors(samples: list, limit: torch.Tensor, correction: torch.Tensor, widths) -> KernelErrors:
    scale = float(limit.norm())
    names = ("error", "error_se", "error_bound", "corrected", "corrected_se", "corrected_bound", "threshold")
    rows = {name: [] for name in names}
    for values, width in zip(samples, widths):
        count = values.shape[0]
        flat = values.reshape(count, -1)
        mean = flat.mean(0)
        cov = torch.cov(flat.T) / count  # Sigma / M: the covariance of the mean, (N^2, N^2)
        noise_sd = math.sqrt(2 * float((cov * cov).sum()))  # sd of |eps|^2 when d = 0
        rows["threshold"].append(math.sqrt(RESOLVED * noise_sd) / scale)
        for name, target in (("error", limit), ("corrected", limit + correction / width)):
            d = mean - target.reshape(-1)
            square = float(d @ d - cov.trace())  # unbiased for |E K_hat - target|^2
            sd = math.sqrt(4 * max(float(d @ cov @ d), 0.0) + noise_sd**2)
            value = math.sqrt(max(square, 0.0))
            rows[name].append(value / scale)
            rows[name + "_se"].append(sd / (2 * value) / scale if value > 0 else math.inf)
            rows[name + "_bound"].append(math.sqrt(max(square, 0.0) + 2 * sd) / scale)
            rows.setdefault(name + "_resolved", []).append(square > RESOLVED * sd)
    arrays = {name: np.array(values) for name, values in rows.items()}
    predicted = float(correction.norm()) / scale / np.asarray(widths, dtype=float)
    return KernelErrors(
        **{name: arrays[name] for name in names}, predicted=predicted,
        slope=fit_slope(widths, arrays["error"], arrays["error_se"], arrays["error_resolved"]),
        corrected_slope=fit_slope(widths, arrays["corrected"], arrays["corrected_se"], arrays["corrected_resolved"]),
        resolved=arrays["error_resolved"], corrected_resolved=arrays["corrected_resolved"],
    )


def fit_slope(widths, error, se, mask) -> Slope:
    """Weighted least squares of log error on log width over ``mask``.

    The weight of a point is 1/Var(log error) = (error/se)^2; the slope's standard error is
    :math:`(\\sum_i w_i (x_i - \\bar x_w)^2)^{-1/2}`, x = log width. NaN with fewer than two points.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() < 2:
        return Slope(math.nan, math.nan, math.nan, int(mask.sum()))
    x = np.log(np.asarray(widths, dtype=float)[mask])
    y = np.log(np.asarray(error)[mask])
    w = (np.asarray(error)[mask] / np.asarray(se)[mask]) ** 2
    x_bar, y_bar = np.average(x, weights=w), np.average(y, weights=w)
    spread = float(np.sum(w * (x - x_bar) ** 2))
    slope = float(np.sum(w * (x - x_bar) * (y - y_bar)) / spread)
    return Slope(slope, 1 / math.sqrt(spread), float(y_bar - slope * x_bar), int(mask.sum()))


def format_table(result: FigureResult) -> str:
    """Errors (relative, ± one standard error) per width, and the fitted slopes."""
    head = f"{'width':>6} {'networks K / Theta':>18}"
    for symbol in ("K", "Theta"):
        head += f"  {symbol + ' infinite-width':>22} {symbol + ' corrected':>22}"
    lines = [head]
    for i, width in enumerate(result.widths):
        line = f"{width:>6d} {result.nngp_networks[i]:>9d} {result.ntk_networks[i]:>8d}"
        for errors in (result.nngp, result.ntk):
            for value, se, bound, ok in (
                (errors.error, errors.error_se, errors.error_bound, errors.resolved),
                (errors.corrected, errors.corrected_se, errors.corrected_bound, errors.corrected_resolved),
            ):
                cell = f"{value[i]:.2e} ± {se[i]:.1e} " if ok[i] else f"< {bound[i]:.1e}*"
                line += f"  {cell:>22}"
        lines.append(line)
    line = f"{'slope':>6} {'':>18}"
    for errors in (result.nngp, result.ntk):
        for fit in (errors.slope, errors.corrected_slope):
            cell = "n/a (< 2 resolved)" if math.isnan(fit.slope) else f"{fit.slope:+.2f} ± {fit.se:.2f}"
            line += f"  {cell:>22}"
    lines.append(line)
    lines.append(
        f"relative Frobenius errors ‖mean - prediction‖/‖K‖ (debiased) ± 1 s.e.; * = not resolved from the "
        f"Monte Carlo noise ({RESOLVED:g} s.d.): an upper bound, left out of the slope fits\n"
        "(theory: slope -1 for the infinite-width kernels, -2 for the corrected ones)"
    )
    return "\n".join(lines)


def _write_summary(result: FigureResult) -> None:
    def fit(slope: Slope) -> dict:
        return {"slope": _finite(slope.slope), "se": _finite(slope.se), "points": slope.points}

    def kernel(errors: KernelErrors) -> dict:
        return {
            "infinite_width_error": _json(errors.error),
            "infinite_width_error_se": _json(errors.error_se),
            "corrected_error": _json(errors.corrected),
            "corrected_error_se": _json(errors.corrected_se),
            "infinite_width_error_upper_bound": _json(errors.error_bound),
            "corrected_error_upper_bound": _json(errors.corrected_bound),
            "resolvable_threshold": _json(errors.threshold),
            "predicted_leading_error": _json(errors.predicted),
            "infinite_width_resolved": errors.resolved.tolist(),
            "corrected_resolved": errors.corrected_resolved.tolist(),
            "infinite_width_slope": fit(errors.slope),
            "corrected_slope": fit(errors.corrected_slope),
        }

    summary = {
        "activation": result.activation,
        "depth": result.depth,
        "architecture": architecture(result),
        "inputs": result.inputs.tolist(),
        "widths": list(result.widths),
        "nngp_networks": list(result.nngp_networks),
        "ntk_networks": list(result.ntk_networks),
        "error": "||mean over networks - prediction||_F / ||infinite-width kernel||_F, debiased for the "
        "Monte Carlo noise (0 where the noise exceeds it); prediction = infinite-width kernel, or it plus "
        "the 1/n correction",
        "resolved_if_squared_error_exceeds_sds": RESOLVED,
        "nngp": kernel(result.nngp),
        "ntk": kernel(result.ntk),
        "seconds": result.seconds,
    }
    result.summary.write_text(json.dumps(summary, indent=2) + "\n")


def _json(values: np.ndarray) -> list:
    return [_finite(float(v)) for v in values]


def _finite(value: float):
    return value if math.isfinite(value) else None


def architecture(result: FigureResult) -> str:
    """One line describing the sampled networks."""
    return (
        f"{result.depth} Dense layers ({result.depth - 1} hidden {result.activation} layers), "
        f"W_std = {W_STD[result.activation]:.3g}, b_std = {B_STD:g}, NTK parameterization"
    )


def plot(result: FigureResult) -> Path:
    """Both kernels' errors against width, log-log, with standard errors, fits and the theory line."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, NullLocator
    except ImportError as error:
        raise ImportError("the ntkit finite-width figure draws with matplotlib: pip install ntkit[plot]") from error

    fig = Figure(figsize=(13.5, 6.4), dpi=150, layout="constrained")
    axes = fig.subplots(1, 2)
    names = (("NNGP kernel", "K", "K"), ("Neural tangent kernel", "\\Theta", "\\Theta"))
    for ax, errors, (title, symbol, _) in zip(axes, (result.nngp, result.ntk), names):
        _plot_kernel(ax, result.widths, errors, symbol)
        ax.set_title(title + f" ${symbol}$", fontsize=14, fontweight="bold")
        ax.xaxis.set_major_locator(FixedLocator(result.widths))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(w) for w in result.widths])
    networks = ", ".join(
        f"{_span(counts)} for ${symbol}$"
        for counts, symbol in ((result.nngp_networks, "K"), (result.ntk_networks, "\\Theta"))
    )
    fig.suptitle(
        f"$\\bf{{Finite\\ width\\ corrections\\ at\\ initialization:\\ a\\ deep\\ {result.activation}\\ MLP}}$\n"
        f"{architecture(result)}; {result.inputs.shape[0]} inputs in {result.inputs.shape[1]} dimensions\n"
        f"means over independent networks (exact sampler), per width: {networks}",
        fontsize=12,
    )
    fig.text(
        0.5, -0.01,
        "Error: $\\|\\,\\mathrm{mean\\ of\\ sampled\\ kernels} - \\mathrm{prediction}\\,\\|_F"
        "\\, /\\, \\|K_\\infty\\|_F$ "
        "over all pairs of inputs, with the Monte Carlo noise's bias removed.  Error bars: $\\pm$1 standard error.\n"
        f"Filled points are resolved (squared error > {RESOLVED:g} s.d.) and fitted (weighted least squares); "
        "open points are not resolved: 2 s.d. upper bounds.\nAt small $n$ the $O(n^{-2})$ term bends the "
        "infinite-width error off slope $-1$ by about the ratio of the two errors.",
        ha="center", va="top", fontsize=10,
    )
    fig.savefig(result.figure, bbox_inches="tight")
    return result.figure


def _span(counts) -> str:
    return f"{max(counts):,}" if len(set(counts)) == 1 else f"{max(counts):,} to {min(counts):,}"


def _plot_kernel(ax, widths, errors: KernelErrors, symbol: str) -> None:
    n = np.asarray(widths, dtype=float)
    floor = errors.threshold
    bottom = min(floor.min(), errors.corrected_bound.min()) / 4
    ax.fill_between(n, bottom / 10, floor, color="0.9", lw=0, label="not resolvable with these networks")
    ax.plot(n, errors.predicted, color="tab:blue", ls="--", lw=1.6,
            label=f"theory $\\|{symbol}^1\\|_F / n$ (no fit): slope $-1$")
    series = (
        (errors.error, errors.error_se, errors.error_bound, errors.resolved, errors.slope, "tab:blue", "o",
         f"infinite-width ${symbol}_\\infty$"),
        (errors.corrected, errors.corrected_se, errors.corrected_bound, errors.corrected_resolved,
         errors.corrected_slope, "tab:orange", "s", f"corrected ${symbol}_\\infty + {symbol}^1/n$"),
    )
    for value, se, bound, resolved, fit, color, marker, label in series:
        if resolved.any():
            low = np.minimum(se, 0.9 * value)[resolved]  # a log axis: the bar stops above zero
            ax.errorbar(n[resolved], value[resolved], yerr=(low, se[resolved]), fmt=marker, ms=8, color=color,
                        mew=1.6, capsize=3, elinewidth=1.3, zorder=3)
        if (~resolved).any():  # upper bounds: an open marker with an arrow down
            ax.errorbar(n[~resolved], bound[~resolved], yerr=0.35 * bound[~resolved], uplims=True, fmt=marker,
                        ms=8, color=color, mfc="white", mew=1.6, capsize=3, elinewidth=1.1, zorder=3)
        text = "too few resolved points" if math.isnan(fit.slope) else f"fit slope ${fit.slope:+.2f} \\pm {fit.se:.2f}$"
        if not math.isnan(fit.slope):
            span = n[resolved]
            ax.plot(span, np.exp(fit.intercept) * span**fit.slope, color=color, lw=2.0)
        ax.plot([], [], marker=marker, ms=8, color=color, lw=2.0, label=f"{label}: {text}")
    if errors.corrected_resolved.any():  # the n^-2 guide through the resolved corrected points
        keep = errors.corrected_resolved
        anchor = np.exp(np.mean(np.log(errors.corrected[keep]) + 2 * np.log(n[keep])))
        ax.plot(n, anchor * n**-2.0, color="tab:orange", ls=":", lw=1.8, label="$\\propto n^{-2}$ (guide)")
    ax.plot([], [], marker="o", ms=8, color="0.4", mfc="white", ls="none",
            label="open, arrow down: not resolved, upper bound")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylim(bottom, max(errors.error.max(), errors.predicted.max()) * 8)  # room for the legend
    ax.set_xlim(n[0] / 1.2, n[-1] * 1.2)
    ax.set_xlabel("hidden width $n$", fontsize=12)
    ax.set_ylabel("relative error of the mean kernel", fontsize=12)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(frameon=True, framealpha=0.9, edgecolor="none", fontsize=9.5, loc="upper right")
