"""The contract every ntkit layer passes, public so that users can run it on their own layers.

``check_layer(layer)`` checks a layer's kernel map against its own finite face: the average
empirical NNGP and NTK of many independently initialised wide networks (the finite face,
differentiated by autograd) must agree with the analytic kernel within their sampling error.
It also checks symmetry, positive semi-definiteness, ``kernel(x) == kernel(x, x)``, float32
against float64, and that the kernel's feature shape is the shape ``forward`` produces.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.func import functional_call, jacrev

from .kernel import Kernel
from .layers import Dense, Layer, serial


class SampledKernels(NamedTuple):
    """Monte Carlo estimates of a network's kernels, with their standard errors (all (N, N))."""

    nngp: torch.Tensor
    nngp_se: torch.Tensor
    ntk: torch.Tensor
    ntk_se: torch.Tensor


def sample_kernels(net: Layer, x: torch.Tensor, n_samples: int, ntk_outputs: int = 4, seed: int = 0) -> SampledKernels:
    """Average empirical NNGP and NTK of ``n_samples`` independent initialisations of ``net``.

    For each draw the NNGP estimate is :math:`f(x) f(x)^T / C`, averaged over the C output
    channels, and the NTK estimate is :math:`\\sum_p \\partial_p f_c(x)\\, \\partial_p f_c(x)^T`
    from the full Jacobian (``torch.func.jacrev``), averaged over the first ``ntk_outputs``
    channels (every channel has the same distribution, so any subset is unbiased). Standard
    errors are the sample standard deviations over draws divided by :math:`\\sqrt{S}`.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        net(x)  # materialise lazy parameters
        nngps, ntks = [], []
        for _ in range(n_samples):
            for module in net.modules():
                if isinstance(module, Dense) or (module is not net and hasattr(module, "reset_parameters")):
                    module.reset_parameters()
            nngp, ntk = _empirical_kernels(net, x, ntk_outputs)
            nngps.append(nngp)
            ntks.append(ntk)
    nngps, ntks = torch.stack(nngps), torch.stack(ntks)
    scale = 1 / math.sqrt(n_samples)
    return SampledKernels(nngps.mean(0), nngps.std(0) * scale, ntks.mean(0), ntks.std(0) * scale)


def _empirical_kernels(net: Layer, x: torch.Tensor, ntk_outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    params = {name: p.detach() for name, p in net.named_parameters() if p.requires_grad}
    with torch.no_grad():
        out = net(x)
    nngp = out @ out.T / out.shape[1]
    channels = min(ntk_outputs, out.shape[1])

    def outputs(p):
        return functional_call(net, p, (x,))[:, :channels]

    jacobian = jacrev(outputs)(params)
    ntk = torch.zeros_like(nngp)
    for block in jacobian.values():
        flat = block.reshape(x.shape[0], channels, -1)
        ntk += torch.einsum("icp,jcp->ij", flat, flat)
    return nngp, ntk / channels


def z_scores(estimate: torch.Tensor, standard_error: torch.Tensor, analytic: torch.Tensor) -> torch.Tensor:
    """``|estimate - analytic| / standard_error``, with the error floored at float64 round-off."""
    floor = 1e-12 * analytic.abs().max().clamp(min=1e-300)
    return (estimate - analytic).abs() / standard_error.clamp(min=floor)


def critical_z(n_entries: int, false_alarm: float = 1e-4) -> float:
    """Two-sided Bonferroni threshold: P(max |z| > z) <= false_alarm for ``n_entries`` normal z."""
    from scipy.stats import norm

    return float(norm.isf(false_alarm / (2 * n_entries)))


def check_layer(
    layer: Layer,
    x: torch.Tensor | None = None,
    *,
    wrap: bool = True,
    width: int = 512,
    n_samples: int = 32,
    monte_carlo: bool = True,
    accuracy: float | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> None:
    """Run the ntkit layer contract on ``layer``; raise AssertionError naming what failed.

    Parameters
    ----------
    layer : Layer
        The layer (or whole network) to check.
    x : Tensor (N, d), optional
        Inputs; by default 5 random examples in 4 dimensions, one of them repeated so that
        some pairs have correlation 1.
    wrap : bool
        Check ``serial(Dense(width), layer, Dense(width))`` rather than ``layer`` alone, so that
        nonlinearities see Gaussian inputs and the readout is wide. Pass False for a network
        that already starts with an affine layer and ends in a wide one.
    width : int
        Width of the wrapping layers; the finite-width bias of the Monte Carlo average is
        :math:`O(1/\\text{width})` and must stay below its sampling error.
    n_samples : int
        Independent initialisations averaged by the Monte Carlo check.
    monte_carlo : bool
        Whether to run the Monte Carlo check (the slow part).
    accuracy : float, optional
        Relative accuracy of the layer's kernel map (e.g. 1e-10 for quadrature); by default
        exact up to float64 round-off. It widens the positive-semi-definiteness check.
    device : str or torch.device
        Where to run the finite and the infinite network (e.g. "cuda").
    seed : int
        Seed of the default inputs and of the Monte Carlo initialisations.
    """
    if x is None:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(5, 4, generator=generator, dtype=torch.float64)
        x[4] = x[0]
    net = serial(Dense(width, 1.3, 0.2), layer, Dense(width, 1.1, 0.1)) if wrap else layer
    net = net.to(device=device, dtype=torch.float64)
    x = x.to(device=device, dtype=torch.float64)
    k = net.kernel(x)
    _check_algebra(net, x, k, accuracy or 0.0)
    _check_float32(net, x, k)
    if monte_carlo:
        check_monte_carlo(net, x, k, n_samples=n_samples, seed=seed)


def check_monte_carlo(net: Layer, x: torch.Tensor, k: Kernel, n_samples: int = 32, seed: int = 0) -> float:
    """Assert that the analytic ``k`` agrees with sampled finite networks; return the largest z."""
    sampled = sample_kernels(net, x, n_samples, seed=seed)
    upper = torch.triu_indices(x.shape[0], x.shape[0])
    z = torch.cat([
        z_scores(sampled.nngp, sampled.nngp_se, k.nngp)[upper[0], upper[1]],
        z_scores(sampled.ntk, sampled.ntk_se, k.ntk)[upper[0], upper[1]],
    ])
    threshold = critical_z(z.numel())
    worst = float(z.max())
    assert worst <= threshold, (
        f"{net.name}: Monte Carlo over {n_samples} finite networks disagrees with the analytic "
        f"kernel: max |z| = {worst:.2f} > {threshold:.2f}\nanalytic nngp\n{k.nngp}\nsampled\n"
        f"{sampled.nngp}\nanalytic ntk\n{k.ntk}\nsampled\n{sampled.ntk}"
    )
    return worst


def _check_algebra(net: Layer, x: torch.Tensor, k: Kernel, accuracy: float) -> None:
    name = net.name
    for field in ("nngp", "ntk"):
        value = getattr(k, field)
        assert value.shape == (x.shape[0], x.shape[0]), f"{name}: {field} has shape {tuple(value.shape)}"
        assert bool(torch.isfinite(value).all()), f"{name}: {field} is not finite"
        assert torch.equal(value, value.T), f"{name}: {field} of kernel(x) is not exactly symmetric"
        # An error E moves eigenvalues by at most ||E||_2 <= N max|E_ij|; each entry carries a
        # few ulps per layer (allow 64 eps) plus the kernel map's own stated accuracy.
        eigenvalues = torch.linalg.eigvalsh(value)
        relative = 64 * torch.finfo(value.dtype).eps + accuracy
        tolerance = x.shape[0] * relative * float(value.abs().max())
        assert float(eigenvalues.min()) >= -tolerance, f"{name}: {field} is not PSD: {eigenvalues}"
    same = net.kernel(x, x)
    assert torch.equal(same.nngp, k.nngp) and torch.equal(same.ntk, k.ntk), f"{name}: kernel(x, x) != kernel(x)"
    assert torch.equal(k.nngp.diagonal(), k.var1), f"{name}: the NNGP diagonal is not the variances"
    x2 = x.flip(0)[:3] * 0.7
    forward, backward = net.kernel(x, x2), net.kernel(x2, x)
    for field in ("nngp", "ntk"):
        a, b = getattr(forward, field), getattr(backward, field).T
        scale = float(a.abs().max())
        # The two orders round differently (and a quadrature rule is not symmetric in u, v):
        # each layer adds a few ulps of relative error to what it receives, so the bound grows
        # with the number of layers (a deep Erf network reaches ~1.5 eps per layer).
        tolerance = (16 * torch.finfo(a.dtype).eps * _depth(net) + accuracy) * scale
        assert torch.allclose(a, b, rtol=0, atol=tolerance), (
            f"{name}: kernel(x1, x2) != kernel(x2, x1).T for {field}"
        )
    with torch.no_grad():
        out = net(x)
    assert tuple(k.feature_shape) == tuple(out.shape[1:]), (
        f"{name}: kernel feature shape {k.feature_shape} != forward output shape {tuple(out.shape[1:])}"
    )


def _check_float32(net: Layer, x: torch.Tensor, k: Kernel) -> None:
    single = net.kernel(x, dtype=torch.float32)
    for field in ("nngp", "ntk"):
        a, b = getattr(single, field).double(), getattr(k, field)
        assert bool(torch.isfinite(a).all()), f"{net.name}: float32 {field} is not finite"
        # Near correlation 1 the arc-cosine derivative terms have infinite slope: a rounding of
        # eps in a correlation moves them by sqrt(2 eps)/(2 pi) ~ 8e-5; allow that per layer.
        tolerance = _depth(net) * math.sqrt(torch.finfo(torch.float32).eps) * float(b.abs().max())
        assert float((a - b).abs().max()) <= tolerance, f"{net.name}: float32 and float64 {field} differ"


def _depth(net: Layer) -> int:
    """The number of leaf layers: how many kernel maps round an entry on its way through."""
    return sum(1 for m in net.modules() if not list(m.children()))
