"""The O(1/n) mean output of networks trained to convergence with their NTK frozen.

Ground truth: Monte Carlo over independently initialised one-hidden-layer networks, each
"trained" exactly (a network trained to convergence on MSE with a frozen NTK outputs
Theta_hat(x, X) Theta_hat(X, X)^-1 Y on average, the joint inverse over outputs and inputs).
Their NTKs come from a vectorised formula, itself checked against ``ntkit.empirical_ntk``.
The prediction ``infinite + correction / n`` must agree within 5 standard errors at n = 64,
where the O(1/n^2) remainder is below the sampling error; the infinite-width prediction alone
and a correction without its NTK-variance terms must be rejected by the same samples.
"""

from __future__ import annotations

import math

import pytest
import torch

import ntkit as nk
from ntkit.finite_width import trained_mean_frozen_ntk

D, OUTPUTS = 3, 2
STDS = dict(sw1=1.5, sb1=0.3, sw2=1.2, sb2=0.2)
ACTIVATIONS = {"tanh": (torch.tanh, nk.Tanh), "relu": (torch.relu, nk.ReLU)}


def data():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(3, D, generator=g, dtype=torch.float64), torch.randn(3, OUTPUTS, generator=g,
            dtype=torch.float64), torch.randn(2, D, generator=g, dtype=torch.float64))


def network(width: int, activation) -> nk.Layer:
    return nk.serial(nk.Dense(width, STDS["sw1"], STDS["sb1"]), activation(), nk.Dense(OUTPUTS, STDS["sw2"], STDS["sb2"]))


def sampled_ntks(x, width, act, w1, b1, w2):
    """Theta_hat[m, a, b, i, j] of networks m with N(0, 1) weights (the "ntk" parameterization):
    delta_ij (sb2^2 + sw2^2 h_a.h_b / n) + sw2^2/n sum_k W2_ik W2_jk h'_k(a) h'_k(b) Theta1_ab."""
    n, d = width, x.shape[1]
    z1 = (STDS["sw1"] / math.sqrt(d) * torch.einsum("mnd,ad->man", w1, x) + STDS["sb1"] * b1[:, None]).requires_grad_()
    h = act(z1)
    slope = torch.autograd.grad(h.sum(), z1)[0]
    h = h.detach()
    theta1 = STDS["sb1"] ** 2 + STDS["sw1"] ** 2 * (x @ x.T) / d
    readout = STDS["sb2"] ** 2 + STDS["sw2"] ** 2 * torch.einsum("man,mbn->mab", h, h) / n
    hidden = STDS["sw2"] ** 2 / n * torch.einsum("min,mjn,man,mbn->mabij", w2, w2, slope, slope) * theta1[:, :, None, None]
    return hidden + readout[..., None, None] * torch.eye(w2.shape[1], dtype=torch.float64)


def frozen_ntk_outputs(x_train, y, x_test, width, act, networks, seed):
    """Theta_hat(x_test, X) Theta_hat(X, X)^-1 Y for each of ``networks`` random networks."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(networks, width, D, generator=g, dtype=torch.float64)
    b1 = torch.randn(networks, width, generator=g, dtype=torch.float64)
    w2 = torch.randn(networks, OUTPUTS, width, generator=g, dtype=torch.float64)
    x = torch.cat([x_train, x_test])
    t = sampled_ntks(x, width, act, w1, b1, w2)
    n_all, k = x.shape[0], x_train.shape[0] * OUTPUTS
    joint = t.permute(0, 1, 3, 2, 4).reshape(networks, n_all * OUTPUTS, n_all * OUTPUTS)
    target = y.reshape(-1).expand(networks, k).unsqueeze(-1)
    solution = torch.linalg.solve(joint[:, :k, :k], target).squeeze(-1)
    return torch.einsum("mpq,mq->mp", joint[:, k:, :k], solution).reshape(networks, -1, OUTPUTS)


def test_the_sampled_ntk_formula_is_the_empirical_ntk_of_an_ntkit_network():
    x_train, _, x_test = data()
    x = torch.cat([x_train, x_test])
    g = torch.Generator().manual_seed(1)
    w1, b1, w2 = (torch.randn(1, *s, generator=g, dtype=torch.float64) for s in ((8, D), (8,), (OUTPUTS, 8)))
    net = network(8, nk.Tanh).double()
    net(x)
    with torch.no_grad():
        net[0].weight.copy_(w1[0]); net[0].bias.copy_(b1[0]); net[2].weight.copy_(w2[0])
    expected = nk.empirical_ntk(net, x, trace_axes=())  # (N, N, O, O)
    torch.testing.assert_close(sampled_ntks(x, 8, torch.tanh, w1, b1, w2)[0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_the_frozen_ntk_correction_matches_trained_networks(name):
    act, layer = ACTIVATIONS[name]
    width = 64
    x_train, y, x_test = data()
    outputs = torch.cat([frozen_ntk_outputs(x_train, y, x_test, width, act, 10_000, seed) for seed in range(4)])
    mean, error = outputs.mean(0), outputs.std(0) / math.sqrt(outputs.shape[0])
    prediction = trained_mean_frozen_ntk(network(width, layer), x_train, y, x_test)
    assert prediction.width == width and prediction.infinite.shape == (2, OUTPUTS)
    z = ((mean - prediction.corrected) / error).abs().max()
    assert z < 5, f"{name}: the 1/n prediction is {z:.1f} standard errors from the trained networks"
    # negative controls: the same samples reject infinite width, and half or 1.5 times the correction
    for scale in (0.0, 0.5, 1.5):
        wrong = prediction.infinite + scale * prediction.correction / width
        z_wrong = ((mean - wrong) / error).abs().max()
        assert z_wrong > 5, f"{name}: {scale} x the correction is only {z_wrong:.1f} standard errors off"


def test_at_one_hidden_layer_the_whole_correction_is_the_ntk_variance():
    """Theta^1 = 0 at one hidden layer (the first layer is Gaussian), yet the trained mean moves."""
    x_train, y, x_test = data()
    net = network(64, nk.Tanh)
    theta_1 = nk.finite_width.corrections(net, torch.cat([x_train, x_test])).ntk_correction
    assert float(theta_1.abs().max()) == 0.0
    assert float(trained_mean_frozen_ntk(net, x_train, y, x_test).correction.abs().max()) > 0.1


def test_the_infinite_part_is_kernel_regression_and_the_coefficient_does_not_depend_on_width():
    x_train, y, x_test = data()
    small = trained_mean_frozen_ntk(network(16, nk.Tanh), x_train, y, x_test)
    large = trained_mean_frozen_ntk(network(256, nk.Tanh), x_train, y, x_test)
    torch.testing.assert_close(small.correction, large.correction, rtol=1e-12, atol=1e-12)
    net = network(16, nk.Tanh)
    k_train, k_test = net.kernel(x_train).ntk, net.kernel(x_test, x_train).ntk
    torch.testing.assert_close(small.infinite, k_test @ torch.linalg.solve(k_train, y), rtol=1e-10, atol=1e-12)


def test_bad_input_is_named():
    x_train, y, x_test = data()
    with pytest.raises(nk.NtkitError, match="y_train has shape"):
        trained_mean_frozen_ntk(network(16, nk.Tanh), x_train, y[:2], x_test)
    with pytest.raises(nk.NtkitError, match="features"):
        trained_mean_frozen_ntk(network(16, nk.Tanh), x_train, y, x_test[:, :2])
    with pytest.raises(nk.NtkitError, match="width"):
        trained_mean_frozen_ntk(network(16, nk.Tanh), x_train, y, x_test, width=1)
