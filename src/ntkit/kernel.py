"""Kernel: the statistics of a layer's outputs that the next layer needs, at infinite width."""

from __future__ import annotations

import dataclasses

import torch


#: The sources of the raw inputs' kernel (see ``Kernel.sources``).
INPUTS = frozenset({"inputs"})


@dataclasses.dataclass(frozen=True)
class Kernel:
    """Infinite-width statistics of one layer's outputs on two batches of inputs.

    Every layer of an ntkit network maps a ``Kernel`` of its inputs to a ``Kernel`` of its
    outputs; ``net.kernel(x1, x2)`` returns the one at the end of the network. Statistics are
    per output unit (per channel): in the infinite-width limit all units are independent and
    identically distributed, so one number per pair of inputs describes them all.

    Attributes
    ----------
    nngp : Tensor, shape (N1, N2), or (N1, N2, *S, *S) for images
        :math:`K(x_i, x'_j) = \\mathbb{E}[z(x_i)\\, z(x'_j)]`, the covariance of one output unit
        over random initializations: the NNGP kernel (Neal 1994; Lee et al. 2018, eq. 4). For
        images and sequences with spatial shape S (``(H, W)`` or ``(L,)``), entry
        ``[i, j, p, p']`` is the covariance of one channel at position p of ``x_i`` with position
        p' of ``x'_j`` (the full spatial covariance that pooling needs; Novak et al. 2019).
    ntk : Tensor of the shape of ``nngp``, or None
        :math:`\\Theta(x_i, x'_j) = \\sum_p \\partial_p z(x_i)\\, \\partial_p z(x'_j)`, the neural
        tangent kernel of one output unit (Jacot et al. 2018, eq. 6), or None when it was not
        asked for.
    var1 : Tensor, shape (N1,), or (N1, *S, *S) for images
        :math:`K(x_i, x_i)`, the variance of one output unit at each input of the first batch:
        the self-covariances that nonlinearities need to normalise ``nngp``. For images, the
        covariance between positions p and p' of the same example; its (p, p) entries are the
        per-position variances, the pairs of a unit with itself (correlation exactly 1).
        In the ``"diagonal"`` spatial layout, shape (N1, *S): the per-position variances only.
    var2 : Tensor, shape (N2,) or (N2, *S, *S)
        The same for the second batch (equal to ``var1`` when ``same_inputs``).
    feature_shape : tuple of int
        Shape of one example's outputs in the finite network, without the batch axis
        (``(width,)`` for a fully-connected layer, ``(channels, *S)`` for images). Layers whose kernel depends on widths
        (``parameterization="standard"``, ``FanInConcat``) read it from here.
    same_inputs : bool
        True when the two batches are the same examples (``x2`` was None or ``x2 is x1``), so
        that ``nngp[i, i]`` pairs an example with itself: nonlinearities then use correlation
        exactly 1 on the diagonal, and ``Dropout`` shares its mask there.
    is_gaussian : bool
        True when the outputs are jointly Gaussian (after an affine layer), the condition for
        a nonlinearity's closed-form or quadrature kernel map to hold.
    centred : bool
        True when every output unit has mean zero over initializations: after a ``Dense`` or
        ``Conv`` (zero-mean weights and biases) and what keeps it (pooling, sums, ``Dropout``),
        not after an activation or on the raw inputs. ``LayerNorm``'s map needs it (the
        channel mean must vanish), and so does adding two branches that are not independent
        given their means (``FanInSum``).
    sources : frozenset
        The random layers the outputs were last drawn from: ``{id(layer)}`` after a ``Dense``,
        ``Conv`` or ``ConvLocal``, kept by every deterministic map, the union of the branches
        after a merge, and ``{"inputs"}`` for the inputs. Branches with disjoint sources are
        independent given the kernels (at infinite width), so their kernels add or multiply;
        branches that share one (two ``Identity`` branches, or the same layer twice) do not.
    spatial_layout : "full" or "diagonal"
        How image kernels hold their positions. ``"full"`` (the default, and what a network
        that ends on images returns): all pairs of positions, ``nngp`` of shape
        ``(N1, N2, *S, *S)``. ``"diagonal"``: only equal positions, ``nngp[i, j, p]`` of shape
        ``(N1, N2, *S)`` and ``var1`` of shape ``(N1, *S)``. A network without pooling that
        ends in ``Flatten`` needs only these: convolutions pair position p of one image with
        position p of the other, shifted alike (Novak et al. 2019, Section 3.1), and
        ``Flatten`` reads only p = p'. The engine chooses it for such networks (cost
        :math:`O(|S|)` per pair instead of :math:`O(|S|^2)`); layers say whether they accept it
        with ``Layer.diagonal_layout``. Meaningless, and ``"full"``, for vectors.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    var1: torch.Tensor
    var2: torch.Tensor
    feature_shape: tuple[int, ...]
    same_inputs: bool = False
    is_gaussian: bool = False
    spatial_layout: str = "full"
    centred: bool = False
    sources: frozenset = INPUTS

    def replace(self, **changes) -> "Kernel":
        """A copy with some fields changed (the dataclass is frozen)."""
        return dataclasses.replace(self, **changes)

    def map_variances(self, fn) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fn(var1), fn(var2))``, computed once when the two batches are the same."""
        var1 = fn(self.var1)
        return var1, (var1 if self.same_inputs else fn(self.var2))

    @property
    def shape(self) -> tuple[int, int]:
        """``(N1, N2)``: the numbers of inputs in the two batches."""
        return (self.var1.shape[0], self.var2.shape[0])

    @property
    def spatial_ndim(self) -> int:
        """The number of spatial dimensions S of the features (0 for vectors, 2 for images)."""
        return len(self.feature_shape) - 1

    @property
    def diagonal(self) -> bool:
        """Whether the image kernel holds only equal positions (``spatial_layout == "diagonal"``)."""
        return self.spatial_layout == "diagonal"

    @property
    def dtype(self) -> torch.dtype:
        return self.nngp.dtype

    @property
    def device(self) -> torch.device:
        return self.nngp.device

    def __repr__(self) -> str:
        ntk = "None" if self.ntk is None else f"Tensor{tuple(self.ntk.shape)}"
        return (
            f"Kernel(nngp=Tensor{tuple(self.nngp.shape)}, ntk={ntk}, "
            f"feature_shape={self.feature_shape}, same_inputs={self.same_inputs}, "
            f"is_gaussian={self.is_gaussian}, dtype={self.dtype}"
            + (f", spatial_layout={self.spatial_layout!r})" if self.spatial_ndim else ")")
        )
