"""Time ntkit's infinite-width NNGP/NTK of the Myrtle-5 CNN (Shankar et al. 2020).

Runs in the repository's own venv, one image size, N and dtype per process, and prints one
JSON line (see _measure.py). The network and data match peer_cnn.py. With --compare DIR
(nngp.npy, ntk.npy written by ``peer_cnn.py --save DIR``), the JSON line also holds the largest
elementwise relative differences from those kernels.

    .venv/bin/python benchmarks/ntkit_cnn.py --size 8 --n 16 --dtype float64 --repeats 3
"""

import argparse
import math
from pathlib import Path

import torch

from _inputs import make_images
from _measure import print_report, time_calls
from ntkit_mlp import max_relative_difference, nk


def myrtle5():
    """Myrtle-5: 3x3 `same` convolutions (W_std = sqrt 2, no bias) and ReLUs, two 2x2 average
    poolings, global average pooling, a Dense(10) readout."""
    def conv():
        return [nk.Conv(64, (3, 3), padding="same", W_std=math.sqrt(2.0)), nk.ReLU()]

    return nk.serial(
        *conv(), *conv(), nk.AvgPool((2, 2)), *conv(), nk.AvgPool((2, 2)), *conv(),
        nk.GlobalAvgPool(), nk.Dense(10, W_std=math.sqrt(2.0)),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--dtype", choices=("float64", "float32"), required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="directory with nngp.npy, ntk.npy")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    net = myrtle5()
    x = torch.from_numpy(make_images(args.n, args.size, args.dtype))
    result = {}

    def run():
        result["kernel"] = net.kernel(x, dtype=dtype, progress=False)

    timings = time_calls(run, args.repeats)
    extra = {}
    if args.compare:
        kernel = result["kernel"]
        extra = {
            "max_rel_nngp": max_relative_difference(kernel.nngp, args.compare / "nngp.npy"),
            "max_rel_ntk": max_relative_difference(kernel.ntk, args.compare / "ntk.npy"),
        }
    print_report(timings, library=f"ntkit {nk.__version__}", backend=f"torch {torch.__version__}",
                 torch_threads=torch.get_num_threads(), **extra)


if __name__ == "__main__":
    main()
