"""Exact Monte Carlo samplers of finite-width MLP kernels, with no n x n weight matrices."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._errors import NtkitError
from ..layers.rectified import ABReLU
from ._architecture import check_points, check_width, hidden_width, read_mlp
from ._expectations import _smooth_fn

#: Numbers per chunk of networks (B * N * outputs * width): ~64 MB of float64 per array.
_CHUNK_NUMBERS = 1 << 23


class KernelSamples(NamedTuple):
    """One row per sampled network, each (M, N, N) float64.

    ``nngp``: the output layer's conditional covariance
    :math:`\\hat G^{(L)}_{ab} = C_b + \\frac{C_W}{n}\\sum_j \\sigma_{j;a}\\sigma_{j;b}
    = \\mathbb E[z_{i;a} z_{i;b} \\mid \\text{hidden layers}]`.
    ``ntk``: with ``outputs=None``, the conditional mean of one output's NTK,
    :math:`\\hat H^{(L)}_{ab} = \\lambda_b + \\frac{\\lambda_W}{n}\\sum_j\\sigma_{j;a}\\sigma_{j;b}
    + \\frac{C_W}{n}\\sum_j \\sigma'_{j;a}\\sigma'_{j;b}\\hat\\Theta^{(L-1)}_{jj;ab}`
    (the note §2.0); with ``outputs=m``, the empirical NTK of m sampled output neurons
    averaged over them (traced, as :func:`ntkit.empirical_ntk`). None when not asked for.
    Conditioning on the hidden layers (Rao-Blackwellization) keeps every mean and removes the
    readout's noise: Var Ĝ = V/n instead of ~2K^2.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None


def sample_kernels(
    net,
    x: torch.Tensor,
    *,
    n_networks: int,
    width: int | None = None,
    ntk: bool = True,
    outputs: int | None = None,
    seed: int = 0,
) -> KernelSamples:
    """Sample the kernels of ``n_networks`` independent width-n networks at initialization, exactly.

    **Collective forward sampler** (note §4.1.1). Conditioned on layer :math:`\\ell`, the next
    pre-activations are i.i.d. over neurons, Gaussian with covariance :math:`\\hat G^{(\\ell+1)}`
    (RYH §4.1-4.2, conditioned on the layer below), so :math:`Z^{(\\ell+1)} = \\Xi\\,
    (\\hat G^{1/2})^\\top` with :math:`\\Xi \\sim \\mathcal N(0, I)` of shape (n, N) is exact in
    distribution, with no n x n weight matrix.

    **NTK** (note §4.1.2, generalized to N inputs). The NTK forward equation (RYH §8.0) unrolls
    to :math:`\\sum_\\ell (\\lambda_b + \\lambda_W \\sigma_a\\cdot\\sigma_b/n_{\\ell-1})\\,
    J^{(\\ell)}_a J^{(\\ell)\\top}_b`, :math:`J^{(\\ell)}_a = \\partial z_a / \\partial z^{(\\ell)}_a`.
    The backward pass splits each weight matrix as :math:`W = W P + W (I - P)`, with P the
    projector onto span :math:`\\{\\sigma_a\\}`: :math:`W P = (W S)(S^\\top S)^+ S^\\top` is
    fixed by the forward pass (which draws :math:`W S`), and
    :math:`W(I - P) \\overset{d}{=} G (I - P)` with G a fresh Gaussian independent of everything
    the forward pass and the layers above used; :math:`J G` is drawn as
    :math:`(J J^\\top)^{1/2}\\Xi` when J has fewer rows than columns, else with G itself.
    Exact in distribution. With ``outputs=None`` the readout is averaged out analytically:
    the backward pass starts from :math:`J^{(L-1)} = (C_W/n)^{1/2}\\,\\mathrm{diag}\\,\\sigma'`.

    Cost per network: O(L n N^2) forward; with the NTK, O(L n r (N r + n)) for r rows of J
    (r = m outputs, or n with ``outputs=None``). Networks go in chunks of bounded memory.

    Parameters
    ----------
    net : Serial or MLPSpec
    x : Tensor (N, d)
    n_networks : int
        M, the number of independent networks.
    width : int, optional
        Hidden width n (default: the network's own; required for an MLPSpec).
    ntk : bool
        Also sample the NTK (the backward pass).
    outputs : int or None
        None (default): the NTK conditioned on the hidden layers (see :class:`KernelSamples`).
        m: sample m output neurons and average their NTK.
    seed : int
        Seed of a private ``torch.Generator``: the same arguments give the same samples.

    Returns
    -------
    KernelSamples
        ``nngp`` and ``ntk``, (M, N, N) float64 each. ``n * (mean - K)`` estimates K^1 (and
        Theta^1); ``n * Cov`` of two ``nngp`` entries estimates the four-point vertex V.
    """
    x = check_points(x, "x")
    spec = read_mlp(net, None if width is None else check_width(width), x.shape[1])
    width = hidden_width(net) if width is None else width
    for value, name in ((n_networks, "n_networks"), (1 if outputs is None else outputs, "outputs")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NtkitError(f"{name} must be a positive integer, got {value!r}")
    generator = torch.Generator().manual_seed(int(seed))
    rows = width if outputs is None else outputs
    chunk = max(1, _CHUNK_NUMBERS // (x.shape[0] * width * (max(rows, width) if ntk else 1)))
    nngp, ntks = [], []
    for start in range(0, n_networks, chunk):
        g, t = _sample_chunk(spec, x, width, min(chunk, n_networks - start), ntk, outputs, generator)
        nngp.append(g)
        ntks.append(t)
    return KernelSamples(torch.cat(nngp), torch.cat(ntks) if ntk else None)


def _sample_chunk(spec, x, n, batch, with_ntk, outputs, generator):
    depth, count = spec.depth, x.shape[0]
    q = x @ x.T / x.shape[1]
    k1 = spec.c_b[0] + spec.c_w[0] * q
    if depth == 1:
        k = k1.expand(batch, count, count).clone()
        theta = (spec.lambda_b[0] + spec.lambda_w[0] * q).expand(batch, count, count).clone()
        return k, (theta if with_ntk else None)
    z = _gauss(generator, batch, n, count) @ _sqrt_psd(k1).T
    posts, slopes, drawn = [x.T.expand(batch, -1, -1)], [], [None]  # drawn[l] = W^(l+1) S^(l)
    for layer, act in enumerate(spec.activations):
        posts.append(_activation(act, z))
        if with_ntk:
            slopes.append(_slope(act, z))
        gram = posts[-1].transpose(1, 2) @ posts[-1]
        if layer + 1 == depth - 1:
            break
        c_w, c_b = spec.c_w[layer + 1], spec.c_b[layer + 1]
        y = _gauss(generator, batch, n, count) @ _sqrt_psd(gram * (c_w / n)).transpose(1, 2)
        drawn.append(y)
        z = y + _gauss(generator, batch, n, 1) * c_b**0.5
    nngp = spec.c_b[-1] + (spec.c_w[-1] / n) * gram
    if not with_ntk:
        return nngp, None
    if outputs is not None:  # the readout's W S, for m sampled outputs
        drawn.append(_gauss(generator, batch, outputs, count) @ _sqrt_psd(gram * (spec.c_w[-1] / n)).transpose(1, 2))
    return nngp, _backward(spec, posts, slopes, drawn, n, outputs, generator)


def _backward(spec, posts, slopes, drawn, n, outputs, generator):
    """The NTK from J^(l) = d z / d z^(l), top down (see sample_kernels)."""
    depth = spec.depth
    batch, count = posts[-1].shape[0], posts[-1].shape[2]
    fan_ins = [posts[0].shape[1]] + [n] * (depth - 1)

    def weight_term(layer):  # lambda_b + lambda_W sigma_a . sigma_b / n_{l-1}, layer 0-based
        s = posts[layer]
        return spec.lambda_b[layer] + (spec.lambda_w[layer] / fan_ins[layer]) * (s.transpose(1, 2) @ s)

    theta = weight_term(depth - 1).clone()  # J^(L) = I (per output)
    top = depth - 1
    if outputs is None:  # E over the readout: J^(L-1) = sqrt(C_W / n) diag(sigma'), n rows
        jac = torch.diag_embed(slopes[top - 1].transpose(1, 2)) * (spec.c_w[top] / n) ** 0.5
        rows, scale = n, 1.0
        theta = theta + weight_term(top - 1) * torch.einsum("bamj,bcmj->bac", jac, jac)
        top -= 1
    else:
        jac, rows, scale = None, outputs, 1.0 / outputs
    for layer in range(top, 0, -1):  # W^(layer+1), which maps S^(layer)
        s, y = posts[layer], drawn[layer]
        st = s.transpose(1, 2)
        pinv = _pinv_psd(st @ s)  # (S^T S)^+
        std = (spec.c_w[layer] / n) ** 0.5
        if jac is None:  # the sampled readout: J^(L) = I, so J W = W, with m rows
            free = _gauss(generator, batch, rows, n) * std
            fixed = y @ pinv @ st
            base = (free - (free @ s) @ pinv @ st + fixed)[:, None]
        else:
            stacked = jac.reshape(batch, count * rows, jac.shape[-1])
            if stacked.shape[1] < stacked.shape[2]:
                free = _sqrt_psd(stacked @ stacked.transpose(1, 2)) @ (_gauss(generator, batch, count * rows, n) * std)
            else:
                free = stacked @ (_gauss(generator, batch, stacked.shape[2], n) * std)
            free = free - (free @ s) @ pinv @ st
            base = (free + (stacked @ y) @ pinv @ st).reshape(batch, count, rows, n)
        jac = base * slopes[layer - 1].transpose(1, 2)[:, :, None, :]  # times sigma'(z_a) per neuron
        theta = theta + weight_term(layer - 1) * (torch.einsum("bamj,bcmj->bac", jac, jac) * scale)
    return theta


def _gauss(generator, *shape):
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """R with R R^T = matrix: Cholesky, and an eigen square root where it fails (singular PSD)."""
    root, info = torch.linalg.cholesky_ex(matrix)
    failed = info != 0
    if bool(failed.any()):
        values, vectors = torch.linalg.eigh(matrix[failed])
        root[failed] = vectors * values.clamp(min=0).sqrt().unsqueeze(-2)
    return root


def _pinv_psd(matrix: torch.Tensor) -> torch.Tensor:
    """(S^T S)^+, eigenvalues below ``n eps lambda_max`` taken as zero: a Cholesky can succeed on
    an exactly singular S^T S (duplicated inputs, or more inputs than the width) by rounding,
    and its inverse is then ~1e18 noise."""
    return torch.linalg.pinv(matrix, hermitian=True, rtol=matrix.shape[-1] * torch.finfo(matrix.dtype).eps)


def _activation(act, z):
    return _smooth_fn(act)(z) if not isinstance(act, ABReLU) else act.fn(z)


def _slope(act, z):
    if isinstance(act, ABReLU):
        return torch.where(z < 0, torch.full_like(z, act.a), torch.full_like(z, act.b))
    x = z.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (slope,) = torch.autograd.grad(_smooth_fn(act)(x).sum(), x)
    return slope
