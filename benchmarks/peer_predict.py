"""Time neural-tangents' ``nt.predict.gradient_descent_mse_ensemble`` on the foundation MLP.

Runs inside the neural-tangents venv (see _peer_env.py), one dtype per process, and prints one
JSON line (see _measure.py). Each repetition builds a fresh predictor from the jitted kernel
function and times ``predict_fn(x_test=..., get="ntk", compute_cov=True)`` at t=None (kernels
included), then at t = 1, 10, 100 (train-train kernel cached by NT). Network, data and targets
match ntkit_predict.py. With --save DIR, writes the warm-up's results for the agreement check.

    .venv-nt/bin/python benchmarks/peer_predict.py --dtype float64 --repeats 5
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from _inputs import make_inputs
from _measure import print_report
from _nt_import import import_neural_tangents
from peer_mlp import build_kernel_fn

N_TRAIN, N_TEST, OUTPUTS = 2000, 500, 10
TIMES = (1.0, 10.0, 100.0)


def make_targets(dtype: str) -> np.ndarray:
    """(N_TRAIN, OUTPUTS) standard normals, seed 1 (the same in ntkit_predict.py)."""
    return np.random.default_rng(1).standard_normal((N_TRAIN, OUTPUTS)).astype(dtype)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float64", "float32"), required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--save", type=Path, help="directory for the results as .npy")
    args = parser.parse_args()

    nt = import_neural_tangents()
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    kernel_fn = jax.jit(build_kernel_fn(nt.stax), static_argnames="get")
    x = jax.device_put(make_inputs(N_TRAIN + N_TEST, args.dtype))
    x_train, x_test = x[:N_TRAIN], x[N_TRAIN:]
    y_train = jax.device_put(make_targets(args.dtype))
    times = jnp.asarray(TIMES, dtype=args.dtype)
    assert x.dtype == np.dtype(args.dtype), x.dtype

    def once():
        start = time.perf_counter()
        predict_fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train)
        end = jax.block_until_ready(predict_fn(x_test=x_test, get="ntk", compute_cov=True))
        middle = time.perf_counter()
        finite = jax.block_until_ready(predict_fn(t=times, x_test=x_test, get="ntk", compute_cov=True))
        return middle - start, time.perf_counter() - middle, end, finite

    warmup = once()
    runs = [once() for _ in range(args.repeats)]
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        _, _, end, finite = warmup
        for name, value in (("mean_inf", end.mean), ("cov_inf", end.covariance),
                            ("mean_t", finite.mean), ("cov_t", finite.covariance)):
            np.save(args.save / f"{name}.npy", np.asarray(value))
    inf_times = [r[0] for r in runs]
    t_times = [r[1] for r in runs]
    timings = {
        "median_s": statistics.median(inf_times) if runs else None,
        "median_t_s": statistics.median(t_times) if runs else None,
        "times": inf_times,
        "times_t": t_times,
        "warmup_s": warmup[0] + warmup[1],
    }
    print_report(timings, library=f"neural-tangents {nt.__version__}",
                 backend=f"jax {jax.__version__}")


if __name__ == "__main__":
    main()
