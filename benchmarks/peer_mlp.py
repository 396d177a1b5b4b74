"""Time neural-tangents' infinite-width NNGP/NTK of a 3-hidden-layer ReLU MLP.

Runs inside the neural-tangents venv (see _peer_env.py), one size and dtype
per process, and prints one JSON line (see _measure.py). The network and data
match ntkit_mlp.py. With --save DIR, also writes nngp.npy and ntk.npy of the
last run to DIR for the numeric agreement check.

    .venv-nt/bin/python benchmarks/peer_mlp.py --n 1000 --dtype float64 --repeats 5
"""

import argparse
from pathlib import Path

from _inputs import make_inputs
from _measure import print_report, time_calls
from _nt_import import import_neural_tangents


def build_kernel_fn(stax):
    """The benchmark network's kernel function, in neural-tangents' stax."""
    _, _, kernel_fn = stax.serial(
        stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Dense(1, W_std=1.5, b_std=0.05),
    )
    return kernel_fn


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--dtype", choices=("float64", "float32"), required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--save", type=Path, help="directory for nngp.npy, ntk.npy")
    args = parser.parse_args()

    nt = import_neural_tangents()
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    kernel_fn = jax.jit(build_kernel_fn(nt.stax), static_argnames="get")
    x = jax.device_put(make_inputs(args.n, args.dtype))
    assert x.dtype == np.dtype(args.dtype), x.dtype

    result = {}

    def run():
        result["kernel"] = jax.block_until_ready(kernel_fn(x, None, ("nngp", "ntk")))

    timings = time_calls(run, args.repeats)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        np.save(args.save / "nngp.npy", np.asarray(result["kernel"].nngp))
        np.save(args.save / "ntk.npy", np.asarray(result["kernel"].ntk))
    print_report(timings, library=f"neural-tangents {nt.__version__}",
                 backend=f"jax {jax.__version__}")


if __name__ == "__main__":
    main()
