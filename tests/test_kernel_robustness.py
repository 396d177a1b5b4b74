"""Kernel maps on networks whose infinite-width limit once came out wrong without an error.

Found by a sweep against neural-tangents. Where the layer's closed form does not hold
(LayerNorm of units with nonzero mean, sums of correlated branches, Dropout of the raw inputs)
the kernel face must refuse, naming the layer; where it holds, the reference is computed
(mpmath, the finite face).
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

import ntkit as nk

X = torch.tensor([[1.0, 2.0, -0.5], [0.5, -1.0, 1.5]], dtype=torch.float64)


def test_dropout_on_raw_inputs_is_refused():
    """Dropout before the first Dense drops some of finitely many input features: the Dense after
    it is a mixture of Gaussians over the masks, not a Gaussian (neural-tangents: 'Dropout cannot
    be applied to the input layer')."""
    net = nk.serial(nk.Dropout(0.5), nk.Dense(8, W_std=1.0), nk.ReLU(), nk.Dense(1))
    with pytest.raises(nk.NtkitError, match=r"serial\[0\] \(Dropout\): it drops the network's inputs"):
        net.kernel(X)
    nk.serial(nk.Dense(8), nk.ReLU(), nk.Dropout(0.5), nk.Dense(1)).kernel(X)  # after a Dense: fine


# -- closed forms at large input variance (self-pairs, correlation exactly 1) -------------------

mpmath.mp.dps = 50


def _self_pair_reference(name: str, v: float) -> tuple[float, float]:
    """(E[phi(u)^2], E[phi'(u)^2]) for u ~ N(0, v), by mpmath from the closed forms at correlation 1."""
    v = mpmath.mpf(v)
    if name == "Erf":  # a = b = 1, c = 0
        return 2 / mpmath.pi * mpmath.asin(2 * v / (1 + 2 * v)), 4 / mpmath.pi / mpmath.sqrt(1 + 4 * v)
    if name == "Gaussian":  # a = 1, b = -1
        return 1 / mpmath.sqrt(1 + 4 * v), 4 * v / (1 + 4 * v) ** mpmath.mpf(1.5)
    if name == "GELU":  # D = (1 + v)^2 - v^2 = 1 + 2 v, rho = v / (1 + v)
        s, D = 1 + v, 1 + 2 * v
        orthant = mpmath.mpf(1) / 4 + mpmath.asin(v / s) / (2 * mpmath.pi)
        nngp = v * orthant + (2 * v * v / s) / (2 * mpmath.pi * mpmath.sqrt(D))
        kdot = orthant + v / (2 * mpmath.pi * mpmath.sqrt(D)) * (2 / s) + v / (2 * mpmath.pi * D ** mpmath.mpf(1.5))
        return nngp, kdot
    raise KeyError(name)


@pytest.mark.parametrize("name, activation", [("Erf", nk.Erf()), ("Gaussian", nk.Gaussian(1.0, -1.0)), ("GELU", nk.GELU())])
@pytest.mark.parametrize("variance", [1e4, 1e8, 1e12, 1e16])
def test_closed_forms_are_accurate_at_large_variance(name, activation, variance):
    """Dense(W_std=1) -> phi -> Dense(W_std=1): K(x, x) = E[phi^2], Theta(x, x) = E[phi^2] + v E[phi'^2].
    det = (1 + 2b v1)(1 + 2b v2) - 4 b^2 k^2 cancels catastrophically at k = v1 = v2 (relative error
    ~ v * eps), although the correlation there is known to be exactly 1."""
    d = 4
    x = torch.full((1, d), math.sqrt(variance), dtype=torch.float64)  # |x|^2 / d = variance
    k = nk.serial(nk.Dense(8, W_std=1.0), activation, nk.Dense(1, W_std=1.0)).kernel(x)
    nngp, kdot = _self_pair_reference(name, variance)
    ntk = nngp + mpmath.mpf(variance) * kdot
    assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
    assert float(k.nngp[0, 0]) == pytest.approx(float(nngp), rel=1e-10)
    assert float(k.ntk[0, 0]) == pytest.approx(float(ntk), rel=1e-10)


# -- Dense's kernel face ignores its declared / materialized input width ---------------------

def test_dense_kernel_checks_its_input_width_like_conv():
    x = torch.randn(3, 5, dtype=torch.float64)
    net = nk.serial(nk.Dense(4, in_features=7), nk.ReLU(), nk.Dense(1))
    with pytest.raises(nk.NtkitError):
        net(x)  # the finite face refuses
    with pytest.raises(nk.NtkitError, match="Dense"):
        net.kernel(x)  # so should the kernel face (Conv and ConvLocal do)


# -- Elementwise with a function that changes shapes: a raw torch error ----------------------

def test_elementwise_fn_that_changes_shape_gives_ntkit_error():
    net = nk.serial(nk.Dense(3), nk.Elementwise(lambda t: t[..., :1]), nk.Dense(1))
    with pytest.raises(nk.NtkitError, match="Elementwise"):
        net.kernel(torch.randn(3, 4, dtype=torch.float64))


# -- LayerNorm of units with nonzero mean, sums of correlated branches ---------------------------


@pytest.mark.parametrize("net", [
    nk.serial(nk.Dense(16), nk.ReLU(), nk.LayerNorm(), nk.Dense(1)),  # the channel mean of ReLU outputs
    nk.serial(nk.LayerNorm(), nk.Dense(1)),  # the raw inputs' mean
], ids=["after ReLU", "on the inputs"])
def test_layernorm_of_units_with_nonzero_mean_is_refused(net):
    """The finite LayerNorm subtracts each example's channel mean, which tends to E[relu(u)] =
    sqrt(v / 2 pi), not 0: the map K / sqrt(v v') is then wrong (by 0.42 in the first network)."""
    with pytest.raises(nk.NtkitError, match=r"\(LayerNorm\): its input units do not have mean zero"):
        net.kernel(X)


BRANCHES = [
    ("identical", nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.Identity(), nk.Identity()), nk.FanInSum()),
     "both are drawn from the same random layer"),
    ("inputs", nk.serial(nk.FanOut(2), nk.parallel(nk.Identity(), nk.Identity()), nk.FanInSum(), nk.Dense(1)),
     "both are drawn from the inputs"),
    ("post-activation shortcut",
     nk.serial(nk.Dense(8), nk.ReLU(), nk.FanOut(2), nk.parallel(nk.serial(nk.Dense(8), nk.ReLU()), nk.Identity()),
               nk.FanInSum()),
     "both have nonzero mean"),
    ("same branch twice in a product",
     nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.Erf(), nk.Erf()), nk.FanInProd()),
     "both are drawn from the same random layer"),
]


@pytest.mark.parametrize("net, message", [(b[1], b[2]) for b in BRANCHES], ids=[b[0] for b in BRANCHES])
def test_merging_correlated_branches_is_refused(net, message):
    """Identity + Identity is 2z, whose kernel is 4K, not 2K; relu(Dense(h)) + h has the cross
    terms mu_a mu_h' + mu_h mu_a' of the two means."""
    with pytest.raises(nk.NtkitError, match=message):
        net.kernel(X)


def test_residual_blocks_whose_branches_combine_still_work():
    """A Dense or Conv of its own in all branches but one, and a branch of mean zero in each pair:
    the pre-activation residual block, a product of independent branches."""
    def block():
        return nk.serial(nk.FanOut(2), nk.parallel(nk.serial(nk.ReLU(), nk.Dense(8)), nk.Identity()), nk.FanInSum())

    k = nk.serial(nk.Dense(8), block(), block(), nk.ReLU(), nk.Dense(1)).kernel(X)
    assert torch.isfinite(k.ntk).all()
    prod = nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.serial(nk.Erf(), nk.Dense(8)), nk.Dense(8)),
                     nk.FanInProd())
    assert torch.isfinite(prod.kernel(X).nngp).all()


def test_sampled_ntk_of_a_duplicated_input_is_that_of_the_input():
    """sample_kernels projects onto span{sigma_a} with (S^T S)^+; with a duplicated input S^T S is
    singular, and a Cholesky that succeeds by rounding had given samples of ~1e3 (the per-network
    identities Theta[0, 0] = Theta[1, 1] = Theta[0, 1] must hold)."""
    from ntkit.finite_width import sample_kernels

    net = nk.serial(nk.Dense(8, W_std=1.3), nk.Tanh(), nk.Dense(8, W_std=1.3), nk.Tanh(), nk.Dense(1, W_std=1.3))
    x = X[:1]
    pair = sample_kernels(net, torch.cat([x, x]), n_networks=500).ntk
    assert float((pair - pair[:, :1, :1]).abs().max()) <= 1e-6 * float(pair.abs().max())
    single = sample_kernels(net, x, n_networks=500).ntk
    assert float(pair.abs().max()) <= 10 * float(single.abs().max())
