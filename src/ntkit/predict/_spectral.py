"""The train-train kernel, regularized once and factorized on demand, and functions of its spectrum.

Closed-form gradient descent on the squared error is a function of the train-train kernel
:math:`K` (the NTK, or the NNGP for readout-only training): its eigendecomposition gives the
dynamics at any finite time, a Cholesky factor the end of training. Both are computed the first
time they are needed and kept (``TrainKernel``); ``decay`` turns eigenvalues and times into the
two factors every formula needs.
"""

from __future__ import annotations

import math

import torch

from .._errors import NtkitError


class TrainKernel:
    """A train-train kernel :math:`K`, its ridge :math:`\\lambda`, and cached factorizations of
    :math:`K + \\lambda I`.

    The ridge follows neural-tangents: ``diag_reg * trace(K) / n`` (relative to the mean of the
    diagonal), or ``diag_reg`` itself with ``absolute=True``.

    Costs, for :math:`n` training examples: ``eigh`` :math:`O(n^3)` time (about
    :math:`9 n^3` flops, divide and conquer) and two :math:`n \\times n` matrices of memory;
    ``cholesky`` :math:`n^3/3` flops and one :math:`n \\times n` matrix; each is computed at most
    once.
    """

    def __init__(self, k: torch.Tensor, diag_reg: float, absolute: bool, argument: str, where: str):
        self.k = k
        self.n = k.shape[0]
        self.argument = argument
        self.where = where
        self.diag_reg = diag_reg
        self.absolute = absolute
        self.ridge = diag_reg if absolute else diag_reg * float(torch.trace(k)) / self.n
        self._eigh: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cholesky: torch.Tensor | None = None
        _check_symmetric(k, argument, where)

    def regularized(self) -> torch.Tensor:
        k = self.k.clone()
        if self.ridge:
            k.diagonal().add_(self.ridge)
        return k

    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eigenvalues, eigenvectors)`` of :math:`K + \\lambda I`, ascending; an error if it is
        clearly not positive semi-definite (round-off-sized negative eigenvalues are kept: the
        formulas treat them as zero)."""
        if self._eigh is None:
            evals, evecs = torch.linalg.eigh(self.regularized())
            top = float(evals[-1].abs())
            if float(evals[0]) < -rounding_level(evals):
                raise self._not_psd(float(evals[0]), top)
            self._eigh = (evals, evecs)
        return self._eigh

    def cholesky(self) -> torch.Tensor:
        """The lower Cholesky factor of :math:`K + \\lambda I`; an error suggesting ``diag_reg``
        when the matrix is not numerically positive definite."""
        if self._cholesky is None:
            regularized = self.regularized()
            factor, info = torch.linalg.cholesky_ex(regularized)
            column = int(info)
            if column == 0:
                # A pivot d_j with d_j^2 <= n eps max K_ii is rounding noise (Cholesky's backward
                # error is bounded by gamma_{n+1} |L||L^T|, about n eps max K_ii per entry;
                # Higham 2002, Thm. 10.3): the matrix is numerically singular (e.g. two identical
                # training inputs), and solving with it amplifies rounding by 1 / d_j^2.
                pivots = factor.diagonal().square()
                floor = self.n * _eps(pivots.dtype) * float(regularized.diagonal().abs().max())
                if float(pivots.min()) <= floor:
                    column = int(pivots.argmin()) + 1
            if column != 0:
                evals = torch.linalg.eigvalsh(regularized)
                raise self._not_psd(float(evals[0]), float(evals[-1].abs()), column=column)
            self._cholesky = factor
        return self._cholesky

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """:math:`(K + \\lambda I)^{-1} b` by the cached Cholesky factor (:math:`2 n^2` flops a column)."""
        return torch.cholesky_solve(b, self.cholesky())

    def lambda_max(self) -> float:
        """The largest eigenvalue of :math:`K + \\lambda I` (from ``eigh`` if it is cached)."""
        if self._eigh is not None:
            return float(self._eigh[0][-1])
        return float(torch.linalg.eigvalsh(self.regularized())[-1])

    def _not_psd(self, smallest: float, largest: float, column: int | None = None) -> NtkitError:
        failed = "" if column is None else f" (the Cholesky factorization breaks down at column {column})"
        ridge = (
            f"diag_reg={self.diag_reg:g}, i.e. {self.ridge:.3g} added to the diagonal"
            if self.diag_reg else "diag_reg=0"
        )
        mean_diagonal = float(torch.trace(self.k)) / self.n
        if self.absolute or mean_diagonal > 0:
            remedy = f"pass diag_reg={self.suggest_diag_reg(smallest, largest):.0e} or larger"
        else:  # a ridge relative to a mean diagonal <= 0 adds nothing (or subtracts)
            remedy = (f"its mean diagonal is {mean_diagonal:.3g}, so a relative diag_reg cannot help; pass "
                      f"diag_reg_absolute_scale=True with diag_reg={self.suggest_diag_reg(smallest, largest, True):.0e} "
                      "or larger")
        return NtkitError(
            f"{self.where}: {self.argument} is not positive definite at {ridge}: its smallest "
            f"eigenvalue is {smallest:.3g} against a largest of {largest:.3g}{failed}; {remedy}"
        )

    def suggest_diag_reg(self, smallest: float, largest: float, absolute: bool | None = None) -> float:
        """A ``diag_reg`` (in this kernel's convention) that makes :math:`K + \\lambda I` safely
        positive definite, rounded up to a power of ten: ten times the ridge that lifts the
        smallest eigenvalue to zero, and at least :math:`\\sqrt{\\epsilon}\\, \\lambda_{max}`, so
        that the condition number stays below :math:`1/\\sqrt{\\epsilon}` and the solve loses at
        most half the digits in the kernel's (near-)null directions. ``absolute`` chooses the
        convention (default: the kernel's)."""
        dtype = self.k.dtype
        lifted = 10 * max(-(smallest - self.ridge), 0.0)  # from the unregularized kernel
        needed = max(lifted, math.sqrt(_eps(dtype)) * max(largest, _tiny(dtype)))
        if not (self.absolute if absolute is None else absolute):
            needed /= max(float(torch.trace(self.k)) / self.n, _tiny(dtype))
        return 10.0 ** math.ceil(math.log10(needed))


def decay(
    evals: torch.Tensor, t: torch.Tensor, learning_rate: float, size: int, discrete: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 - d, g)``, each of shape ``(T, n)``: how much of each eigendirection's residual has
    been removed, and the integrated kernel-inverse factor, at each time.

    .. math::
        d(\\lambda, t) = \\begin{cases} e^{-\\eta \\lambda t / N} & \\text{gradient flow} \\\\
                                        (1 - \\eta \\lambda / N)^t & \\text{discrete steps}
                         \\end{cases}, \\qquad
        g(\\lambda, t) = \\frac{1 - d(\\lambda, t)}{\\lambda},

    with :math:`N` the number of targets (``y_train.numel()``), so that the residual on the
    training set is :math:`V d V^T (f_0 - y)`. Eigenvalues at the level of ``eigh``'s rounding
    or below (:math:`\lambda \le 8 n \epsilon \lambda_{max}`, as in ``TrainKernel.eigh``: the
    zeros of a semi-definite kernel, e.g. with a duplicated training input) are taken as zero:
    their direction neither decays nor moves test outputs (:math:`g = 0`), which is exact when the
    joint kernel is positive semi-definite; kept, a rounding-sized :math:`\lambda` would make
    :math:`g \approx t` grow without bound over long training.
    ``1 - d`` is computed with ``expm1`` so that :math:`g` keeps full relative precision for
    tiny :math:`\\lambda t`.
    """
    positive = evals > rounding_level(evals)
    lam = torch.where(positive, evals, torch.zeros_like(evals))[None, :]
    t = t.reshape(-1, 1)
    if discrete:
        x = lam * (learning_rate / size)
        below = x < 1
        # (1 - x)^t = exp(t log1p(-x)) for x < 1; for 1 <= x < 2 the base is negative and t a
        # whole number, where pow is exact and there is no cancellation to avoid.
        log_base = torch.log1p(-torch.where(below, x, torch.zeros_like(x)))
        one_minus_d = torch.where(below, -torch.expm1(t * log_base), 1 - torch.pow(1 - x, t))
    else:
        one_minus_d = -torch.expm1(-lam * (t * (learning_rate / size)))
    g = torch.where(positive[None, :], one_minus_d / torch.where(positive, evals, 1)[None, :], 0)
    return one_minus_d, g


def in_basis(evecs: torch.Tensor, weights: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """:math:`V \\operatorname{diag}(w_t) P` for every time: ``(n, n), (T, n), (n, c) -> (T, n, c)``,
    in :math:`2 T n^2 c` flops (one batched product; never a (T, n, n) intermediate)."""
    return evecs @ (weights[:, :, None] * projected)


def check_stable(kernel: TrainKernel, learning_rate: float, size: int, where: str) -> None:
    """Discrete gradient descent diverges unless :math:`\\eta < 2 N / \\lambda_{max}`."""
    top = kernel.lambda_max()
    if learning_rate * top / size >= 2:
        limit = 2 * size / top
        raise NtkitError(
            f"{where}: learning_rate={learning_rate:g} is unstable for discrete gradient descent "
            f"on this kernel: steps diverge unless learning_rate < 2 * y_train.numel() / "
            f"lambda_max = 2 * {size} / {top:.4g} = {limit:.4g}; pass a smaller learning_rate "
            "(see ntkit.predict.max_learning_rate), or discrete=False for gradient flow"
        )


def _check_symmetric(k: torch.Tensor, argument: str, where: str) -> None:
    # A symmetric kernel computed in pieces can differ from its transpose by a few ulps; sqrt(eps)
    # relative to the largest entry separates that from a matrix that is not a kernel at all.
    # Row blocks keep the temporaries small beside the n x n kernel.
    scale = max(float(k.max()), -float(k.min()))
    limit = math.sqrt(_eps(k.dtype)) * max(scale, _tiny(k.dtype))
    for start in range(0, k.shape[0], 256):
        gap = (k[start:start + 256] - k[:, start:start + 256].T).abs_()
        worst = float(gap.max())
        if worst > limit:
            i, j = (int(v) for v in divmod(int(gap.argmax()), k.shape[1]))
            i += start
            raise NtkitError(
                f"{where}: {argument} is not symmetric: entry ({i}, {j}) is {float(k[i, j]):.6g} "
                f"but ({j}, {i}) is {float(k[j, i]):.6g}; pass the kernel between the training "
                "inputs and themselves"
            )


def rounding_level(evals: torch.Tensor) -> float:
    """:math:`8 n \\epsilon \\lambda_{max}`: eigenvalues of a symmetric :math:`n \\times n` matrix
    from ``eigh`` this small are rounding. ``eigh`` is backward stable (each eigenvalue off by at
    most ~ :math:`n \\epsilon \\lVert K \\rVert_2`), and the kernel's own entries carry a few
    :math:`\\epsilon` of relative rounding; 8 covers both."""
    top = float(evals.abs().max())
    return 8 * evals.shape[0] * _eps(evals.dtype) * max(top, _tiny(evals.dtype))


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny
