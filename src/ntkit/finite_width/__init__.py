"""Finite-width (1/n) corrections to the NNGP kernel and NTK of deep MLPs, and exact samplers.

Roberts, Yaida & Hanin, *The Principles of Deep Learning Theory* (2022), ch. 4 and ch. 8:
the 1/n mean corrections (:func:`corrections`), the four-point statistics V, A, B, D, F
(:func:`four_point`, :func:`four_point_subset`), the dNTK statistics P, Q
(:func:`dntk_statistics`), the mean of networks trained with a frozen NTK
(:func:`trained_mean_frozen_ntk`) and exact samplers (:func:`sample_kernels`).
"""

from ._architecture import MLPSpec, read_mlp
from ._corrections import CorrectedKernel, FiniteWidthCorrections, corrected_kernel, corrections
from ._dntk import DNTKStatistics, dntk_statistics, expected_ntk_step
from ._four_point import FourPointStatistics, four_point, four_point_subset
from ._samplers import KernelSamples, sample_kernels
from ._trained import TrainedMean, trained_mean_frozen_ntk

__all__ = [
    "CorrectedKernel", "DNTKStatistics", "FiniteWidthCorrections", "FourPointStatistics", "KernelSamples",
    "MLPSpec", "TrainedMean", "corrected_kernel", "corrections", "dntk_statistics", "expected_ntk_step",
    "four_point", "four_point_subset", "read_mlp", "sample_kernels", "trained_mean_frozen_ntk",
]
