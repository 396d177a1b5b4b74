"""The implementations of ``empirical_ntk`` by name, and the rule behind ``"auto"``.

Like torchdiffeq's ``SOLVERS``: a string picks a class, each in its own small file.

``"auto"`` estimates, for each implementation that applies to the model and whose one-example
working memory fits the budget, the floating-point operations of the whole kernel from the
model's size: the forward FLOPs of one example ``FP`` (counted from the shapes of the matrix
products and convolutions of one forward pass), the number of output units ``O``, the number of
parameters ``P``
and, for ``structured``, each Linear/convolutional layer's positions and widths. It picks the
cheapest, preferring ``structured``, then ``jacobian_contraction``, on ties:

- ``structured``: :math:`N (1 + O)\\,\\mathrm{FP}` for a forward pass and the cotangents (no
  weight gradients), plus for each layer the cheaper of its Gram and explicit contractions,
  plus :math:`N_1 N_2 O P_{other}` for the other modules' parameters. Wins whenever most
  parameters are in Linear or convolutional layers.
- ``jacobian_contraction``: :math:`N (1 + 2 O)\\,\\mathrm{FP} + N_1 N_2 O P`. Wins for models made
  of other modules, and for a model that mixes examples (e.g. BatchNorm in training mode),
  where ``structured`` does not apply.
- ``ntk_vector_products``: :math:`N_1 N_2 O \\cdot 3\\,\\mathrm{FP}`. Wins when ``O P`` is large
  relative to the forward pass (untraced outputs of a wide fully-connected network), and is
  the one left when Jacobians do not fit in memory.
"""

from __future__ import annotations

from .._errors import NtkitError
from ._jacobian_contraction import JacobianContraction
from ._ntk_vector_products import NtkVectorProducts
from ._structured import Structured

IMPLEMENTATIONS = {
    "jacobian_contraction": JacobianContraction,
    "ntk_vector_products": NtkVectorProducts,
    "structured": Structured,
}

_PREFERENCE = ("structured", "jacobian_contraction", "ntk_vector_products")


def make_implementation(name: str, problem, structure, budget: float):
    """The implementation called ``name`` (or chosen by the ``auto`` rule) for ``problem``."""
    if name == "auto":
        return _auto(problem, structure, budget)
    if name not in IMPLEMENTATIONS:
        raise NtkitError(f"implementation must be 'auto' or one of {sorted(IMPLEMENTATIONS)}, got {name!r}")
    cls = IMPLEMENTATIONS[name]
    reason = cls.available(problem, structure)
    if reason:
        raise NtkitError(f"implementation={name!r} does not apply to this model: {reason}")
    return cls(problem, structure, budget)


def _auto(problem, structure, budget: float):
    """The cheapest implementation that applies and fits the budget (else the cheapest that
    applies, whose budget error the caller raises); whether one applies is checked in order of
    cost, since a check may run the model (``ntk_vector_products`` tries a forward-mode pass)."""
    n1, n2 = problem.x1.shape[0], problem.x2.shape[0]
    ranked = sorted(_PREFERENCE, key=lambda name: (IMPLEMENTATIONS[name].cost(problem, structure, n1, n2),
                                                   _PREFERENCE.index(name)))
    too_large = None
    for name in ranked:
        cls = IMPLEMENTATIONS[name]
        if cls.available(problem, structure):
            continue
        implementation = cls(problem, structure, budget)
        if implementation.bytes_per_example() <= budget:
            return implementation
        too_large = too_large or implementation
    return too_large
