"""Numba's ``njit`` with ntkit's options, and the math the compiled loops share."""

from __future__ import annotations

import math
from functools import partial

import numba

#: ``error_model="numpy"``: a division by zero gives inf/nan instead of raising, so loops have
#: no hidden branch and vectorize. ``fastmath={"contract"}``: fused multiply-adds only, no
#: reassociation, so results stay reproducible to round-off. ``cache``: machine code is kept
#: on disk (``__pycache__``) between processes. Numba checks a cached function against its own
#: file only, not against the functions it inlines from other files: after editing one of
#: those in a working tree, ``make clean-numba`` (a fresh install is not affected).
jit = partial(numba.njit, cache=True, error_model="numpy", fastmath={"contract"}, nogil=True)

# fdlibm's minimax rational approximation of asin on [0, 1/4] (e_asin.c, Sun Microsystems):
# asin(x) = x + x * R(x^2), R(t) = t P(t) / Q(t).
_P = (1.66666666666666657415e-01, -3.25565818622400915405e-01, 2.01212532134862925881e-01,
      -4.00555345006794114027e-02, 7.91534994289814532176e-04, 3.47933107596021167570e-05)
_Q = (-2.40339491173441421878e00, 2.02094576023350569471e00, -6.88283971605453293030e-01,
      7.70381505559019352791e-02)
_P0, _P1, _P2, _P3, _P4, _P5 = _P
_Q1, _Q2, _Q3, _Q4 = _Q
_HALF_PI = 0.5 * math.pi


@jit(inline="always")
def arccos(x):
    """:math:`\\arccos x` for ``x`` in [-1, 1], within 1 ulp, branch-free (so loops vectorize).

    For :math:`|x| \\le 1/2`, :math:`\\arccos x = \\pi/2 - \\arcsin x`; above,
    :math:`\\arccos |x| = 2 \\arcsin\\sqrt{(1 - |x|)/2}` and :math:`\\arccos(-|x|) = \\pi - \\arccos|x|`
    (the reductions of fdlibm's ``e_acos.c``), with the same rational approximation of asin on
    both branches; both are computed and one is selected. Checked against ``numpy.arccos`` in
    the tests.
    """
    a = abs(x)
    small = a <= 0.5
    t = x * x if small else 0.5 - 0.5 * a
    r = t * (_P0 + t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))) / (
        1.0 + t * (_Q1 + t * (_Q2 + t * (_Q3 + t * _Q4)))
    )
    s = math.sqrt(t)
    large = 2.0 * (s + s * r)
    return (_HALF_PI - (x + x * r)) if small else (large if x > 0 else math.pi - large)
