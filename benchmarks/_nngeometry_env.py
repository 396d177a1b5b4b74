"""nngeometry (the PyTorch peer) for the empirical-NTK benchmark, beside the repository's venv.

nngeometry 0.4 is pure Python on top of torch; its declared dependency on torchvision is not
used by its code. It is installed without dependencies into ``.venv-nngeometry`` in the
repository root (a plain ``pip --target`` folder, ignored by git through a ``.gitignore`` of its
own) and put on ``PYTHONPATH`` for the repository's own interpreter, so that it runs on exactly
the torch that ntkit runs on. A marker file records a successful install.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
TARGET = BENCH_DIR.parent / ".venv-nngeometry"
REQUIREMENT = "nngeometry==0.4"
_MARKER = TARGET / "ntkit-bench-ready.txt"


@functools.lru_cache(maxsize=None)
def nngeometry_path() -> "str | None":
    """The folder to put on PYTHONPATH, installing nngeometry there if needed; None, after
    printing why, when it cannot be installed (e.g. without the package index)."""
    if not (_MARKER.is_file() and _MARKER.read_text() == REQUIREMENT):
        print(f"installing {REQUIREMENT} into {TARGET} ...", file=sys.stderr)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--upgrade", "--target", str(TARGET), REQUIREMENT],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
            print(f"nngeometry unavailable: {tail}", file=sys.stderr)
            return None
        (TARGET / ".gitignore").write_text("*\n")
        _MARKER.write_text(REQUIREMENT)
    return str(TARGET)


def nngeometry_env() -> "dict | None":
    path = nngeometry_path()
    if path is None:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    return env


if __name__ == "__main__":
    print(nngeometry_path())
