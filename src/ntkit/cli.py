"""The ``ntkit`` command: ``ntkit demo``, ``ntkit finite-width``, ``ntkit --version``."""

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
    from .datasets import DATASETS

    job = commands.add_parser(
        "demo",
        help="finite networks trained in PyTorch against their infinite-width limit: a figure",
        description=(
            "Train one-hidden-layer ReLU networks of several widths by full-batch gradient "
            "descent (all layers, and the readout only), compute the same training at infinite "
            "width in closed form (NTK and NNGP), and plot test loss and accuracy against steps "
            "and the distance to the infinite-width network against width."
        ),
    )
    job.add_argument("--out", default="ntkit-demo", help="output directory (default: %(default)s)")
    job.add_argument(
        "--dataset", choices=DATASETS, default="digits",
        help="bundled dataset (default: %(default)s; all ship with scikit-learn)",
    )
    job.add_argument(
        "--widths", type=_positive_int, nargs="+", default=None, metavar="W",
        help=f"hidden widths (default: {' '.join(map(str, demo.DEFAULT_WIDTHS))})",
    )
    job.add_argument(
        "--steps", type=_positive_int, default=None, metavar="T",
        help=f"gradient-descent steps (default: {demo.DEFAULT_STEPS})",
    )
    job.add_argument(
        "--quick", action="store_true",
        help=f"widths {' '.join(map(str, demo.QUICK_WIDTHS))} and {demo.QUICK_STEPS} steps (about 30 s)",
    )
    job.add_argument("--seed", type=int, default=0, help="seed of the split and the initializations")
    job.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N",
        help="CPU threads of torch and BLAS (default: all cores; 1 can be much faster when "
        "other processes keep the cores busy)",
    )
    job.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    from . import finite_width_figure as fwf

    job = commands.add_parser(
        "finite-width",
        help="the 1/n correction to the NNGP kernel and NTK against sampled finite networks: a figure",
        description=(
            "Sample deep MLPs of several widths at initialization and plot, against width on "
            "log-log axes, the error of the infinite-width NNGP kernel and NTK against the mean of "
            "the finite networks (slope -1), and the error left after the 1/n correction "
            "(slope -2), with standard errors and fitted slopes."
        ),
    )
    job.add_argument("--out", default="ntkit-finite-width", help="output directory (default: %(default)s)")
    job.add_argument(
        "--activation", choices=tuple(fwf.ACTIVATIONS), default="tanh",
        help="activation of the hidden layers (default: %(default)s)",
    )
    job.add_argument(
        "--quick", action="store_true",
        help=f"widths {' '.join(map(str, fwf.QUICK_WIDTHS))} and fewer networks (a few seconds, noisier)",
    )
    job.add_argument("--seed", type=int, default=0, help="seed of the sampled networks")
    job.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N",
        help="CPU threads of torch (default: all cores)",
    )
    job.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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

    widths = args.widths or (demo.QUICK_WIDTHS if args.quick else demo.DEFAULT_WIDTHS)
    steps = args.steps or (demo.QUICK_STEPS if args.quick else demo.DEFAULT_STEPS)
    start = time.perf_counter()
    with _threads(args.threads):
        result = demo.run(
            out=args.out, dataset=args.dataset, widths=widths, steps=steps, seed=args.seed,
            progress=not args.no_progress,
        )
    print(
        f"{result.dataset}: {result.n_train} train / {result.n_test} test, one-hidden-layer ReLU "
        f"networks after {result.steps[-1]} steps of gradient descent (learning rate "
        f"{result.learning_rate:.3g}), against infinite width:"
    )
    print(demo.format_table(result))
    print(f"done in {time.perf_counter() - start:.1f} s")
    print(f"figure saved to {result.figure.resolve()}")
    print(f"curves saved to {result.table.resolve()}")
    print(f"summary saved to {result.summary.resolve()}")
    return 0


def _finite_width(args: argparse.Namespace) -> int:
    from . import finite_width_figure as fwf

    with _threads(args.threads):
        result = fwf.run(
            out=args.out, activation=args.activation, quick=args.quick, seed=args.seed,
            progress=not args.no_progress,
        )
    print(
        f"{fwf.architecture(result)}; {result.inputs.shape[0]} inputs; mean kernels of sampled "
        f"networks against the infinite-width and 1/n-corrected kernels:"
    )
    print(fwf.format_table(result))
    print(f"done in {result.seconds:.1f} s")
    print(f"figure saved to {result.figure.resolve()}")
    print(f"numbers saved to {result.summary.resolve()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ntkit`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "finite-width":
        return _finite_width(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects unknown ones


if __name__ == "__main__":
    sys.exit(main())
