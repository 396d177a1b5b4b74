"""Time ntkit.empirical_ntk on one benchmark network (see _empirical_nets.py).

Runs in the repository's own venv, one network, dtype and implementation per process, and
prints one JSON line (see _measure.py). With --save DIR it writes the weights, inputs and the
kernel of the last run there, for the peers to load and compare.

    .venv/bin/python benchmarks/ntkit_empirical.py --model cnn --dtype float32 --implementation auto
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from _empirical_nets import build, save_weights
from _empirical_timing import timed
from _measure import peak_rss_mb, print_report

try:
    import ntkit as nk
    from ntkit.empirical import empirical_ntk, empirical_ntk_fn
except ImportError:  # not installed into the venv: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import ntkit as nk
    from ntkit.empirical import empirical_ntk, empirical_ntk_fn


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "cnn", "resnet18"), required=True)
    parser.add_argument("--dtype", choices=("float32", "float64"), required=True)
    parser.add_argument("--implementation", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fn", action="store_true",
                        help="time ntkit.empirical_ntk_fn (the model analysed once, as a jitted NT function)")
    parser.add_argument("--save", type=Path, help="directory for weights.npz, x.npy, ntk.npy")
    args = parser.parse_args()

    model, x = build(args.model, args.dtype)
    result = {}
    baseline_mb = peak_rss_mb()
    ntk_fn = empirical_ntk_fn(model, implementation=args.implementation) if args.fn else None

    def run():
        if ntk_fn is not None:
            result["ntk"] = ntk_fn(x)
        else:
            result["ntk"] = empirical_ntk(model, x, implementation=args.implementation)

    timings = timed(run, args.repeats)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        save_weights(model, x, args.save)
        np.save(args.save / "ntk.npy", result["ntk"].double().numpy())
    name = f"empirical_ntk_fn({args.implementation})" if args.fn else args.implementation
    print_report(timings, library=f"ntkit {getattr(nk, '__version__', '')}", backend=f"torch {torch.__version__}",
                 torch_threads=torch.get_num_threads(), implementation=name, baseline_rss_mb=baseline_mb)


if __name__ == "__main__":
    main()
