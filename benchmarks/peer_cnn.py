"""Time neural-tangents' infinite-width NNGP/NTK of the Myrtle-5 CNN.

Runs inside the neural-tangents venv (see _peer_env.py), one image size, N and dtype per
process, and prints one JSON line (see _measure.py). The network and data match ntkit_cnn.py
(NT takes NHWC images: the same arrays, transposed). With --save DIR, also writes nngp.npy and
ntk.npy of the last run to DIR.

    .venv-nt/bin/python benchmarks/peer_cnn.py --size 8 --n 16 --dtype float64 --repeats 3
"""

import argparse
import math
from pathlib import Path

from _inputs import make_images
from _measure import print_report, time_calls
from _nt_import import import_neural_tangents


def build_kernel_fn(stax):
    def conv():
        return [stax.Conv(64, (3, 3), padding="SAME", W_std=math.sqrt(2.0), b_std=None), stax.Relu()]

    def pool():  # NT's strides default to 1; Myrtle (and ntkit's default) pools with stride 2
        return stax.AvgPool((2, 2), strides=(2, 2))

    _, _, kernel_fn = stax.serial(
        *conv(), *conv(), pool(), *conv(), pool(), *conv(),
        stax.GlobalAvgPool(), stax.Dense(10, W_std=math.sqrt(2.0), b_std=None),
    )
    return kernel_fn


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--dtype", choices=("float64", "float32"), required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save", type=Path, help="directory for nngp.npy, ntk.npy")
    args = parser.parse_args()

    nt = import_neural_tangents()
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    kernel_fn = jax.jit(build_kernel_fn(nt.stax), static_argnames="get")
    x = jax.device_put(make_images(args.n, args.size, args.dtype).transpose(0, 2, 3, 1))
    result = {}

    def run():
        result["kernel"] = jax.block_until_ready(kernel_fn(x, None, ("nngp", "ntk")))

    timings = time_calls(run, args.repeats)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        np.save(args.save / "nngp.npy", np.asarray(result["kernel"].nngp))
        np.save(args.save / "ntk.npy", np.asarray(result["kernel"].ntk))
    print_report(timings, library=f"neural-tangents {nt.__version__}", backend=f"jax {jax.__version__}")


if __name__ == "__main__":
    main()
