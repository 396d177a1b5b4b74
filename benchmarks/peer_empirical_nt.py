"""Time neural-tangents' empirical NTK on one benchmark network, with the weights ntkit saved.

Runs inside the neural-tangents venv (see _peer_env.py), one network, dtype and NT
implementation per process, and prints one JSON line (see _measure.py). The network is the
one of _empirical_nets.py in stax with ``parameterization="standard"``, so that the torch
weights (loaded from --load DIR, written by ``ntkit_empirical.py --save DIR``) give the same
function; images are transposed to NHWC. With --save-kernel FILE the kernel is written there.

NT is run as fast as it goes: ``jax.jit``-compiled, ``vmap_axes=0`` (examples are
independent; ``--vmap-axes none`` gives NT's default), traced over the logits, ``x2=None``.

    .venv-nt/bin/python benchmarks/peer_empirical_nt.py --model cnn --dtype float32 \
        --implementation 3 --load DIR
"""

import argparse
from pathlib import Path

from _empirical_timing import timed
from _measure import peak_rss_mb, print_report
from _nt_import import import_neural_tangents

W_STD, B_STD = 1.5, 0.05  # as _empirical_nets.py (only the initialization, replaced by --load)


def build(stax, model: str):
    standard = dict(W_std=W_STD, b_std=B_STD, parameterization="standard")
    if model == "mlp":
        return stax.serial(stax.Dense(512, **standard), stax.Relu(), stax.Dense(512, **standard), stax.Relu(),
                           stax.Dense(10, **standard))
    return stax.serial(
        stax.Conv(64, (3, 3), padding="SAME", **standard), stax.Relu(),
        stax.Conv(64, (3, 3), padding="SAME", **standard), stax.Relu(),
        stax.GlobalAvgPool(), stax.Dense(10, **standard),
    )


def load_params(model: str, weights, jnp, dtype):
    """The torch parameters (by name) in stax's layout: Dense W (in, out); Conv W HWIO."""
    def dense(prefix):
        return (jnp.asarray(weights[f"{prefix}.weight"].T, dtype), jnp.asarray(weights[f"{prefix}.bias"], dtype))

    def conv(prefix):
        w = weights[f"{prefix}.weight"].transpose(2, 3, 1, 0)
        return (jnp.asarray(w, dtype), jnp.asarray(weights[f"{prefix}.bias"].reshape(1, 1, 1, -1), dtype))

    if model == "mlp":
        return [dense("0"), (), dense("2"), (), dense("4")]
    return [conv("0"), (), conv("2"), (), (), dense("5")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "cnn"), required=True)
    parser.add_argument("--dtype", choices=("float32", "float64"), required=True)
    parser.add_argument("--implementation", type=int, choices=(1, 2, 3), required=True,
                        help="1 jacobian contraction, 2 NTK-vector products, 3 structured derivatives")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--load", type=Path, required=True)
    parser.add_argument("--save-kernel", type=Path)
    parser.add_argument("--vmap-axes", choices=("0", "none"), default="0",
                        help="0 (examples are independent, NT's fastest) or none (NT's default)")
    args = parser.parse_args()

    nt = import_neural_tangents()
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    _, apply_fn, _ = build(nt.stax, args.model)
    weights = np.load(args.load / "weights.npz")
    params = load_params(args.model, weights, jnp, args.dtype)
    x = np.load(args.load / "x.npy")
    if args.model == "cnn":
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    x = jax.device_put(jnp.asarray(x, args.dtype))
    ntk_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,),
                                         vmap_axes=0 if args.vmap_axes == "0" else None,
                                         implementation=nt.NtkImplementation(args.implementation)))
    result = {}
    baseline_mb = peak_rss_mb()

    def run():
        result["ntk"] = jax.block_until_ready(ntk_fn(x, None, params))

    timings = timed(run, args.repeats)
    if args.save_kernel:
        np.save(args.save_kernel, np.asarray(result["ntk"], dtype=np.float64))
    print_report(timings, library=f"neural-tangents {nt.__version__}", backend=f"jax {jax.__version__}",
                 implementation=nt.NtkImplementation(args.implementation).name + ("" if args.vmap_axes == "0" else " (vmap_axes=None)"),
                 baseline_rss_mb=baseline_mb)


if __name__ == "__main__":
    main()
