"""The benchmark inputs, identical on both sides.

Both the ntkit and the neural-tangents scripts call ``make_inputs`` so that
they compute kernels of exactly the same data: standard-normal rows of
MNIST's dimension from a fixed seed, drawn in float64 and then cast.
"""

import numpy as np

INPUT_DIM = 784
SEED = 0


def make_inputs(n: int, dtype: str) -> np.ndarray:
    """Return an (n, 784) array of standard normals in ``dtype``."""
    x = np.random.default_rng(SEED).standard_normal((n, INPUT_DIM))
    return x.astype(dtype)


def make_images(n: int, size: int, dtype: str) -> np.ndarray:
    """Return an (n, 3, size, size) array (NCHW) of standard normals in ``dtype``."""
    x = np.random.default_rng(SEED).standard_normal((n, 3, size, size))
    return x.astype(dtype)
