"""Finite-width (1/n) corrections to the NNGP kernel and NTK of deep MLPs, and exact samplers.

Roberts, Yaida & Hanin, *The Principles of Deep Learning Theory* (2022), ch. 4 and ch. 8.
"""

from ._architecture import MLPSpec, read_mlp
from ._corrections import CorrectedKernel, FiniteWidthCorrections, corrected_kernel, corrections
from ._samplers import KernelSamples, sample_kernels

__all__ = [
    "CorrectedKernel", "FiniteWidthCorrections", "KernelSamples", "MLPSpec", "corrected_kernel",
    "corrections", "read_mlp", "sample_kernels",
]
