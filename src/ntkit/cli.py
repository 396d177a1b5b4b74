"""The ``ntkit`` command: ``ntkit demo``, ``ntkit --version``."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence

import torch

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntkit", description="Wide neural networks and their infinite-width kernels."
    )
    parser.add_argument("--version", action="version", version=f"ntkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from . import demo

    job = commands.add_parser(
        "demo",
        help="NNGP and NTK regression on digits against depth: a table and a figure",
        description=(
            "For 1 to 8 hidden layers, compute the NNGP and NTK of a ReLU MLP on the "
            "scikit-learn digits, classify the test images by kernel regression, and plot "
            "test accuracy against depth."
        ),
    )
    job.add_argument("--out", default="ntkit-demo", help="output directory (default: %(default)s)")
    depths = job.add_mutually_exclusive_group()
    depths.add_argument(
        "--depths", type=int, nargs="+", default=demo.DEFAULT_DEPTHS, metavar="D",
        help="numbers of hidden layers (default: 1 to 8)",
    )
    depths.add_argument(
        "--quick", action="store_true",
        help=f"only depths {', '.join(map(str, demo.QUICK_DEPTHS))} (a smoke test)",
    )
    job.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N",
        help="CPU threads of torch and BLAS (default: all cores; 1 can be much faster when "
        "other processes keep the cores busy)",
    )
    job.add_argument(
        "--diag-reg", type=float, default=demo.DIAG_REG,
        help="ridge relative to the kernel's mean diagonal (default: %(default)g)",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Limit torch's threads and, through threadpoolctl where installed, BLAS's to ``n``.

    Restored on exit, since ``main`` may run inside a bigger process (tests, notebooks).
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
        except ImportError:
            yield
        else:
            with threadpool_limits(limits=n):
                yield
    finally:
        torch.set_num_threads(before)


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    start = time.perf_counter()
    with _threads(args.threads):
        result = demo.run(
            out=args.out,
            depths=demo.QUICK_DEPTHS if args.quick else args.depths,
            diag_reg=args.diag_reg,
        )
    print(
        f"Kernel regression on digits ({result.n_train} train / {result.n_test} test), "
        f"ReLU MLPs of infinite width:"
    )
    print(demo.format_table(result))
    print(f"done in {time.perf_counter() - start:.1f} s")
    print(f"figure saved to {result.figure.resolve()}")
    print(f"table saved to {result.table.resolve()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ntkit`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects unknown ones


if __name__ == "__main__":
    sys.exit(main())
