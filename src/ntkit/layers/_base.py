"""The two-faced layer: a torch module (the finite network) and a kernel map (its infinite-width limit)."""

from __future__ import annotations

import contextvars
from collections.abc import Sequence

import torch
from torch import nn

from .._errors import NtkitError, located
from .._inputs import Inputs
from ..kernel import Kernel

#: What flows between layers in kernel space: one Kernel, or one per branch after ``FanOut``.
Kernels = Kernel | Sequence[Kernel]

#: True while an ntkit layer's forward runs: layers called inside it are named by their
#: combinator (``serial[2] (Dense)``), not by themselves.
_IN_FORWARD = contextvars.ContextVar("ntkit_in_forward", default=False)


class Layer(nn.Module):
    """Base class of every ntkit layer and combinator.

    A layer has two faces that describe the same architecture:

    * ``forward(x)``: the finite network at the widths it was given, an ordinary
      ``torch.nn.Module`` that any torch optimizer can train;
    * ``kernel_map(k)``: the map from the infinite-width :class:`~ntkit.Kernel` of the layer's
      inputs to the one of its outputs, computed analytically.

    ``kernel(x1, x2)`` is defined once here, for every layer and every composition. To add a
    layer, subclass ``Layer``, implement both faces, and run
    :func:`ntkit.testing.check_layer` on it.
    """

    #: Combinators name their children in error messages (``serial[3] (ReLU)``); other layers
    #: are named by the caller, or by ``kernel`` itself at the top level.
    _names_children = False

    #: Whether the layer's kernel map acts on images and sequences (N, C, *spatial). A network
    #: takes such inputs when one of its layers does; otherwise they are refused with a hint.
    takes_images = False

    #: Whether ``kernel_map`` accepts image kernels in the diagonal layout (equal positions
    #: only, see :attr:`ntkit.Kernel.spatial_layout`): true for layers whose outputs at equal
    #: positions depend on inputs at equal positions only (convolutions, activations, Flatten),
    #: false for pooling. A network is computed in that layout when all its layers accept it
    #: and it ends without spatial axes. False by default, so that a user's own layer is safe.
    diagonal_layout = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def kernel_map(self, k: Kernels) -> Kernels:
        """Map the kernel of this layer's inputs to the kernel of its outputs."""
        raise NotImplementedError(f"{self.name} has no kernel map")

    def kernel(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor | None = None,
        *,
        get: str | Sequence[str] = ("nngp", "ntk"),
        dtype: torch.dtype = torch.float64,
        block_size: int | None = None,
        progress: bool | None = None,
        memory_budget: int | str | None = None,
    ) -> Kernel | tuple[Kernel, ...]:
        """Infinite-width NNGP and NTK of this network between ``x1`` and ``x2``.

        Parameters
        ----------
        x1 : Tensor, shape (N1, features), or (N1, C, L) / (N1, C, H, W)
            First batch of inputs; sequences and images (channels first) for networks with
            convolutions or pooling.
        x2 : Tensor, shape (N2, ...) like ``x1``, optional
            Second batch; None (or ``x1`` itself) means the same examples as ``x1``, which
            halves the work and makes the diagonal exact.
        get : "nngp", "ntk" or a tuple of both
            Which kernels are needed; ``"nngp"`` alone skips the NTK recursion.
        dtype : torch.float64 (default) or torch.float32
            Precision of the computation and of the result.
        block_size : int, optional
            Kernels are computed in blocks of ``block_size`` x ``block_size`` pairs, which
            bounds the working memory to a few such blocks beside the result. Default on a
            GPU: as large as the memory budget allows, up to 8192. Default on the CPU: 512 for
            vectors; for images, as many as keep a block's covariances under 4M entries: a
            pair holds positions^2 of them (2 x 2 pairs for 32 x 32 images), or only
            ``positions`` for a network without pooling that ends in ``Flatten`` (the diagonal
            layout of :class:`~ntkit.Kernel`, chosen automatically; 64 x 64 pairs at 32 x 32).
        progress : bool, optional
            Show a progress bar over blocks; None shows one for large kernels on a terminal.
        memory_budget : int or str, optional
            Bytes (or a string such as ``"4GB"``) that the computation may use: a quarter for
            the blocks in flight, the rest for the result. Default: half of the memory
            available on the inputs' device when the call starts. A result that does not fit
            raises an error that says what it would need and how to tile it.

        Returns
        -------
        Kernel
            ``nngp`` and ``ntk`` of shape (N1, N2) (``ntk`` is None unless asked for), or
            (N1, N2, *S, *S) for a network that ends on images (all pairs of positions,
            ``spatial_layout="full"``; see :class:`~ntkit.Kernel`); a tuple
            of Kernels for a network with several outputs (e.g. ending in ``FanOut``).
        """
        from ._engine import evaluate  # the engine imports Layer: import it late

        return evaluate(
            self, x1, x2, get=get, dtype=dtype, block_size=block_size, progress=progress, budget=memory_budget
        )

    def __call__(self, *args, **kwargs):
        """``forward``, with an NtkitError raised inside prefixed by this layer's name when the
        call is the outermost one (inside a network, the combinator names its children)."""
        if _IN_FORWARD.get():
            return super().__call__(*args, **kwargs)
        token = _IN_FORWARD.set(True)
        try:
            if self._names_children:
                return super().__call__(*args, **kwargs)
            with located(self.name):
                return super().__call__(*args, **kwargs)
        finally:
            _IN_FORWARD.reset(token)

    def map_inputs(self, inputs: Inputs) -> Kernels:
        """The kernel of this layer's outputs when it is the network's first layer:
        ``kernel_map(inputs.kernel())``. A layer whose outputs' kernel is cheaper to compute from
        the raw inputs than from their kernel overrides it (``Conv``)."""
        return self.kernel_map(inputs.kernel())

    def _located_map_inputs(self, inputs: Inputs) -> Kernels:
        """``map_inputs`` with errors prefixed by this layer's name (for top-level calls)."""
        if self._names_children:
            return self.map_inputs(inputs)
        with located(self.name):
            return self.map_inputs(inputs)


def single(k: Kernels, layer: str) -> Kernel:
    """The one Kernel a single-input layer expects; a clear error for a list of branches."""
    if isinstance(k, Kernel):
        return k
    raise NtkitError(
        f"received {len(k)} branches; {layer} takes one input (merge branches with "
        "FanInSum, FanInConcat or FanInProd first)"
    )


def branches(k: Kernels, layer: str) -> list[Kernel]:
    """The list of Kernels a multi-input layer expects; a clear error for a single one."""
    if isinstance(k, Kernel):
        raise NtkitError(f"received a single input; {layer} merges branches (use FanOut first)")
    return list(k)


def require_gaussian(k: Kernel, layer: str) -> None:
    """Nonlinearities' kernel maps hold only for jointly Gaussian inputs."""
    if not k.is_gaussian:
        raise NtkitError(
            f"the input of {layer} is not Gaussian: its kernel map needs Gaussian "
            "pre-activations, i.e. an affine layer (Dense) before it"
        )
