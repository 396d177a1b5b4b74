"""The separate virtual environment that runs neural-tangents (the peer).

neural-tangents 0.6.5 needs an old JAX and NumPy 1.x, which must not leak into
the repository's own environment, so it gets its own venv at ``.venv-nt`` in
the repository root. It is built on first use and reused afterwards; a marker
file written after a successful smoke test records what was installed, so a
half-built or outdated venv is rebuilt from scratch.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
VENV_DIR = BENCH_DIR.parent / ".venv-nt"

JAX_REQUIREMENTS = (
    "jax==0.4.25",
    "jaxlib==0.4.25",
    "numpy==1.26.4",
    "scipy==1.12.0",
    "ml_dtypes",
    "opt_einsum",
    "frozendict",
)
# Installed with --no-deps: its declared dependencies include TensorFlow and
# tf2jax, which only neural_tangents.experimental needs (see _nt_import.py).
NT_REQUIREMENT = "neural-tangents==0.6.5"

_MARKER = VENV_DIR / "ntkit-bench-ready.txt"
_SPEC = "\n".join((*JAX_REQUIREMENTS, NT_REQUIREMENT)) + "\n"

_SMOKE_TEST = """
from _nt_import import import_neural_tangents
import jax, jax.numpy as jnp
stax = import_neural_tangents().stax
_, _, kernel_fn = stax.serial(stax.Dense(8, W_std=1.5, b_std=0.05), stax.Relu(),
                              stax.Dense(1, W_std=1.5, b_std=0.05))
k = jax.jit(kernel_fn, static_argnames="get")(jnp.ones((3, 4)), None, ("nngp", "ntk"))
assert k.nngp.shape == k.ntk.shape == (3, 3), k
print("neural-tangents smoke test passed")
"""


def _venv_python():
    return VENV_DIR / "bin" / "python"


def peer_env_vars():
    """Environment for processes in the peer venv: CPU-only JAX, quiet logs."""
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    return env


def _run(args, what):
    """Run a setup step; raise RuntimeError with its output's tail on failure."""
    result = subprocess.run(
        [str(a) for a in args], cwd=BENCH_DIR, env=peer_env_vars(),
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"{what} failed: " + " | ".join(tail))


def _build():
    """Create the venv from scratch, install the peer and smoke-test it."""
    _run([sys.executable, "-m", "venv", "--clear", VENV_DIR], "creating the venv")
    pip = [_venv_python(), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, *JAX_REQUIREMENTS], "installing JAX")
    _run([*pip, "--no-deps", NT_REQUIREMENT], "installing neural-tangents")
    _run([_venv_python(), "-c", _SMOKE_TEST], "the neural-tangents smoke test")
    _MARKER.write_text(_SPEC)


@functools.lru_cache(maxsize=None)
def neural_tangents_python() -> "str | None":
    """Path of the peer venv's python, building the venv if needed.

    Returns None, after printing why, when the venv cannot be set up (for
    example without access to the package index).
    """
    ready = _MARKER.is_file() and _MARKER.read_text() == _SPEC
    if not ready:
        print(f"setting up neural-tangents in {VENV_DIR} ...", file=sys.stderr)
        try:
            _build()
        except (OSError, RuntimeError) as exc:
            print(f"neural-tangents unavailable: {exc}", file=sys.stderr)
            return None
    return str(_venv_python())


if __name__ == "__main__":
    print(neural_tangents_python())
