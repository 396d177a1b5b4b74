"""The one exception type of ntkit, and the bookkeeping that names where it happened."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class NtkitError(ValueError):
    """Bad input or an invalid option, with the place in the network where it was found.

    The message names the layer's path (e.g. ``serial[3] (ReLU)``), the argument and the
    offending shape or value, and, where there is one, the remedy.
    """

    def __init__(self, message: str, path: tuple[str, ...] = ()):
        self.message = message
        self.path = path
        super().__init__(self._render())

    def _render(self) -> str:
        where = " > ".join(self.path)
        return f"{where}: {self.message}" if where else self.message

    def inside(self, step: str) -> "NtkitError":
        """The same error, seen from one level further out in the network."""
        return NtkitError(self.message, (step,) + self.path)


@contextlib.contextmanager
def located(step: str) -> Iterator[None]:
    """Prefix any NtkitError raised inside with ``step`` (e.g. ``serial[3] (ReLU)``)."""
    try:
        yield
    except NtkitError as error:
        raise error.inside(step) from None
