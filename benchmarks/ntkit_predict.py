"""Time ntkit's closed-form ensemble predictions (``ntkit.predict``) on the foundation MLP.

Runs in the repository's own venv, one dtype per process, and prints one JSON line (see
_measure.py). Each repetition builds a fresh predictor and times two calls, as a user would make
them: ``predict(x_test, t=None, get="ntk", compute_cov=True)`` (the kernels included), then
``predict(x_test, t=[1, 10, 100], ...)`` on the same predictor (the train-train kernel cached, the
eigendecomposition not). The network, data and targets match peer_predict.py. With
--compare DIR (arrays written by ``peer_predict.py --save DIR``), the JSON line also holds the
largest relative differences from neural-tangents' results, relative to each array's scale.

    .venv/bin/python benchmarks/ntkit_predict.py --dtype float64 --repeats 5
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _inputs import make_inputs
from _measure import print_report

try:
    import ntkit as nk
    from ntkit import predict
except ImportError:  # not installed into the venv: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import ntkit as nk
    from ntkit import predict

N_TRAIN, N_TEST, OUTPUTS = 2000, 500, 10
TIMES = (1.0, 10.0, 100.0)


def make_targets(dtype: str) -> np.ndarray:
    """(N_TRAIN, OUTPUTS) standard normals, seed 1 (the same in peer_predict.py)."""
    return np.random.default_rng(1).standard_normal((N_TRAIN, OUTPUTS)).astype(dtype)


def build_network():
    """The foundation benchmark's network (bench_mlp.py), in ntkit."""
    return nk.serial(
        nk.Dense(512, W_std=1.5, b_std=0.05), nk.ReLU(),
        nk.Dense(512, W_std=1.5, b_std=0.05), nk.ReLU(),
        nk.Dense(512, W_std=1.5, b_std=0.05), nk.ReLU(),
        nk.Dense(1, W_std=1.5, b_std=0.05),
    )


def max_relative_difference(actual: torch.Tensor, reference_npy: Path) -> float:
    """max |actual - ref| / max |ref|: the error relative to the array's scale."""
    ref = np.load(reference_npy).astype(np.float64)
    got = actual.detach().to(torch.float64).cpu().numpy()
    if got.shape != ref.shape:
        raise ValueError(f"shape {got.shape} vs reference {ref.shape} in {reference_npy}")
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float64", "float32"), required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="directory with the peer's .npy results")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    net = build_network()
    x = torch.from_numpy(make_inputs(N_TRAIN + N_TEST, args.dtype))
    x_train, x_test = x[:N_TRAIN], x[N_TRAIN:]
    y_train = torch.from_numpy(make_targets(args.dtype))
    times = torch.tensor(TIMES, dtype=dtype)

    def once():
        start = time.perf_counter()
        predictor = predict.gradient_descent_mse_ensemble(net, x_train, y_train, dtype=dtype)
        end = predictor(x_test, t=None, get="ntk", compute_cov=True)
        middle = time.perf_counter()
        finite = predictor(x_test, t=times, get="ntk", compute_cov=True)
        return middle - start, time.perf_counter() - middle, end, finite

    warmup = once()
    runs = [once() for _ in range(args.repeats)]
    extra = {}
    if args.compare:
        _, _, end, finite = warmup
        extra = {
            "max_rel_mean_inf": max_relative_difference(end.mean, args.compare / "mean_inf.npy"),
            "max_rel_cov_inf": max_relative_difference(end.covariance, args.compare / "cov_inf.npy"),
            "max_rel_mean_t": max_relative_difference(finite.mean, args.compare / "mean_t.npy"),
            "max_rel_cov_t": max_relative_difference(finite.covariance, args.compare / "cov_t.npy"),
        }
    inf_times = [r[0] for r in runs]
    t_times = [r[1] for r in runs]
    timings = {
        "median_s": statistics.median(inf_times) if runs else None,
        "median_t_s": statistics.median(t_times) if runs else None,
        "times": inf_times,
        "times_t": t_times,
        "warmup_s": warmup[0] + warmup[1],
    }
    print_report(timings, library=f"ntkit {getattr(nk, '__version__', '?')}",
                 backend=f"torch {torch.__version__}", torch_threads=torch.get_num_threads(), **extra)


if __name__ == "__main__":
    main()
