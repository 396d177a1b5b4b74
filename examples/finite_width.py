"""The 1/n finite-width correction at work: `python examples/finite_width.py [tanh|gelu]`.

Samples deep MLPs of widths 8 to 64 at initialization (about a minute on two cores) and plots
the error of the infinite-width NNGP kernel and NTK against the mean of the finite networks,
before (slope -1) and after (slope -2) the 1/n correction. Same as `ntkit finite-width`.
"""

import sys

from ntkit import finite_width_figure

result = finite_width_figure.run(out="ntkit-finite-width", activation=sys.argv[1] if len(sys.argv) > 1 else "tanh")
print(finite_width_figure.format_table(result))
print(f"figure: {result.figure}")
