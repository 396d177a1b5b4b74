"""Import neural-tangents without TensorFlow.

``import neural_tangents`` also imports ``neural_tangents.experimental``, whose
TF interop module imports ``tensorflow``, ``tf2jax`` and
``jax.experimental.jax2tf`` at import time (the last one needs ``absl`` and
TensorFlow too). Nothing in ``neural_tangents.stax`` uses them, so the peer
environment does not install them: this module puts inert stand-ins into
``sys.modules`` first. Any real use of a stand-in raises ``ImportError``.

Usage (inside the neural-tangents virtual environment)::

    from _nt_import import import_neural_tangents
    nt = import_neural_tangents()
    stax = nt.stax
"""

import importlib
import sys
import types

_MISSING_MODULES = ("tensorflow", "tf2jax", "jax.experimental.jax2tf")


class _Missing:
    """Any attribute of a stand-in module: usable in type hints, not callable."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise ImportError(f"{self._name} is a stand-in: TensorFlow is not installed")

    def __repr__(self):
        return f"<missing {self._name}>"


class _MissingModule(types.ModuleType):
    """A module whose every public attribute is a ``_Missing`` placeholder."""

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self.__name__}.{attr}")


def install_stand_ins():
    """Insert stand-ins for the TF-related modules not already imported."""
    for name in _MISSING_MODULES:
        if name in sys.modules:
            continue
        sys.modules[name] = _MissingModule(name)
        parent_name, _, child = name.rpartition(".")
        if parent_name:
            setattr(importlib.import_module(parent_name), child, sys.modules[name])


def import_neural_tangents():
    """Return the ``neural_tangents`` module, imported behind the stand-ins."""
    install_stand_ins()
    return importlib.import_module("neural_tangents")
