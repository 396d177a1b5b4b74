"""Real training: ensembles of finite ntkit networks trained by gradient descent in PyTorch.

The closed forms of ``ntkit.predict`` describe infinitely wide networks. Here hundreds of finite
networks (the library's own finite face, ``nk.Dense`` in the "ntk" parameterization), each
initialized independently, are trained by full-batch gradient descent on the loss of
neural-tangents, ``||f(X) - y||^2 / (2 y.numel())``, with plain ``p -= lr * grad`` steps at the
same learning rate the closed form is given (``discrete=True``: t counts steps). Then

1. at large width, the mean and covariance of the test outputs over the ensemble agree with
   ``gradient_descent_mse_ensemble`` (Lee et al. 2019, eqs. 15-16) within Monte Carlo error, at
   several times;
2. each network's outputs differ from those of its infinitely wide counterpart started from the
   same initial function (``gradient_descent_mse`` with its ``f_0``) by O(1/sqrt(width)) (Lee et
   al. 2019, Theorem 2.1 and Figure 1): the fitted log-log slope is -1/2.

Each check has a negative control: the same statistic computed against a plausibly wrong
prediction (the NNGP instead of the NTK, a learning rate off by the factor 2 of the loss
convention, a covariance without its cross terms) exceeds the threshold.

The networks are trained all at once: their parameters are stacked (``torch.func``) and the
forward pass of one ntkit network is vectorized over them with ``vmap(functional_call)``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

import ntkit as nk
from ntkit import predict

WIDTHS = (64, 256, 1024)
N_NETWORKS = 256
STEPS = (1, 4, 16, 64)
SLOW_STEPS = (1, 4, 16)
# Bonferroni: at each of the 4 times, 3 test means and 6 covariance entries are compared, 36
# z-scores in all; |z| > 4.2 has a two-sided normal probability of 2.7e-5, so a correct
# implementation fails with probability < 36 * 2.7e-5 ~ 1e-3 over the random seeds.
Z_MAX = 4.2


def _mlp(width: int, hidden: int = 1, activation=nk.Erf) -> nk.Serial:
    layers = []
    for _ in range(hidden):
        layers += [nk.Dense(width, W_std=2.0, b_std=0.2), activation()]
    return nk.serial(*layers, nk.Dense(1, W_std=2.0, b_std=0.2))


def _data():
    """Five training inputs on a circle (their NTK has condition number ~10, so 64 steps at half
    the maximal learning rate nearly converge), three test inputs between them, and targets."""
    n, m = 5, 3
    angles = torch.cat([torch.arange(n) * 2 * math.pi / n, (torch.arange(m) + 0.37) * 2 * math.pi / m])
    x = torch.stack([angles.cos(), angles.sin(), 0.3 * torch.ones_like(angles)], 1).double()
    y = torch.tensor([[1.0], [-0.5], [0.8], [-1.0], [0.3]], dtype=torch.float64)
    return x[:n], x[n:], y


def train_ensemble(net: nk.Serial, x_train, y_train, x_test, learning_rate, steps, n_networks, seed):
    """Train ``n_networks`` independent initializations of ``net`` by full-batch gradient descent.

    Returns ``(f0_train (M, n), f0_test (M, m), outputs {step: (M, m)})`` in float64: initial
    outputs and the test outputs after each of ``steps`` steps (single-output networks).
    Training runs in float32, as networks usually are (three times faster here than float64):
    its rounding, ~1e-7 relative per step, is far below the Monte Carlo errors (~1e-2) and the
    smallest discrepancy measured (~3e-2).
    """
    x_train, y_train, x_test = (a.float() for a in (x_train, y_train, x_test))
    net = net.float()
    net(x_train)  # materialize the lazy input sizes
    torch.manual_seed(seed)
    copies = []
    for _ in range(n_networks):
        copy_ = copy.deepcopy(net)
        for module in copy_.modules():
            if isinstance(module, nk.Dense):
                module.reset_parameters()  # the "ntk" initialization: every parameter N(0, 1)
        copies.append(copy_)
    params, _ = stack_module_state(copies)
    params = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    forward = vmap(lambda p, x: functional_call(net, p, (x,)), in_dims=(0, None))
    with torch.no_grad():
        f0_train, f0_test = (forward(params, x)[..., 0].double() for x in (x_train, x_test))
    outputs = {}
    for step in range(max(steps) + 1):
        if step in steps:
            with torch.no_grad():
                outputs[step] = forward(params, x_test)[..., 0].double()
        if step == max(steps):
            break
        out = forward(params, x_train)  # (M, n, 1)
        # The sum over networks of each one's loss: its gradient is every network's own.
        loss = (out - y_train).square().sum() / (2 * y_train.numel())
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            for p, g in zip(params.values(), grads):
                p -= learning_rate * g
    return f0_train, f0_test, outputs


@pytest.fixture(scope="module")
def ensembles():
    x_train, x_test, y = _data()
    infinite = _mlp(8)
    k_dd, k_td = infinite.kernel(x_train), infinite.kernel(x_test, x_train)
    lr = 0.5 * predict.max_learning_rate(k_dd.ntk, y.numel())
    runs = {
        width: train_ensemble(_mlp(width), x_train, y, x_test, lr, STEPS, N_NETWORKS, seed=width)
        for width in WIDTHS
    }
    return dict(x_train=x_train, x_test=x_test, y=y, k_dd=k_dd, k_td=k_td, lr=lr, runs=runs, net=infinite)


def _z_scores(outputs: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor):
    """z-scores of the sample mean and covariance of ``outputs`` (M, m) against ``(mean, cov)``.

    Under the null the outputs are Gaussian N(mean, cov): the sample mean has standard error
    sqrt(cov_ii / M), and a sample covariance entry has variance (cov_ij^2 + cov_ii cov_jj) / M
    (Anderson, "An introduction to multivariate statistical analysis", 3rd ed., Theorem 3.4.4).
    """
    m = outputs.shape[0]
    var = cov.diagonal()
    z_mean = (outputs.mean(0) - mean) / (var / m).sqrt()
    se_cov = ((cov.square() + torch.outer(var, var)) / m).sqrt()
    z_cov = (torch.cov(outputs.T) - cov) / se_cov
    iu = torch.triu_indices(cov.shape[0], cov.shape[0])
    return z_mean, z_cov[iu[0], iu[1]]


def _max_z(outputs_by_step, prediction, steps=STEPS) -> tuple[float, float]:
    """The largest |z| of the means and of the covariances over all steps."""
    z_means, z_covs = [], []
    for step in steps:
        mean, cov = prediction(step)
        z_mean, z_cov = _z_scores(outputs_by_step[step], mean, cov)
        z_means.append(z_mean.abs().max())
        z_covs.append(z_cov.abs().max())
    return float(max(z_means)), float(max(z_covs))


def test_wide_ensemble_matches_the_closed_form_mean_and_covariance(ensembles):
    e = ensembles
    _, _, outputs = e["runs"][WIDTHS[-1]]
    ensemble = predict.gradient_descent_mse_ensemble(e["net"], e["x_train"], e["y"], e["lr"], discrete=True)

    def closed_form(step, get="ntk", time_factor=1.0):
        mean, cov = ensemble(e["x_test"], t=float(step * time_factor), get=get, compute_cov=True)
        return mean[:, 0], cov

    z_mean, z_cov = _max_z(outputs, closed_form)
    assert z_mean < Z_MAX and z_cov < Z_MAX, (z_mean, z_cov)

    # Negative controls, the same statistic against plausible mistakes:
    # readout-only dynamics (the NNGP) for a network whose every layer was trained,
    assert _max_z(outputs, lambda s: closed_form(s, get="nngp"))[0] > Z_MAX
    # the loss ||f - y||^2 / y.numel() (no 1/2), i.e. time running twice as fast,
    assert _max_z(outputs, lambda s: closed_form(s, time_factor=2.0))[0] > Z_MAX
    # and the covariance without its cross terms -(A K(X, x) + transpose) (eq. 16).
    k_tt = e["net"].kernel(e["x_test"]).nngp

    def without_cross_terms(step):
        mean, cov = closed_form(step)
        a = _a_matrix(e, step)
        return mean, k_tt + a @ e["k_dd"].nngp @ a.T

    assert _max_z(outputs, without_cross_terms)[1] > Z_MAX


def _a_matrix(e, step):
    """Theta(x, X) Theta^{-1} (I - (I - lr Theta / N)^step), by an explicit matrix power."""
    theta = e["k_dd"].ntk
    decay = torch.linalg.matrix_power(torch.eye(5, dtype=torch.float64) - e["lr"] / e["y"].numel() * theta, step)
    return e["k_td"].ntk @ torch.linalg.solve(theta, torch.eye(5, dtype=torch.float64) - decay)


def _discrepancies(e, kernel: str) -> list[float]:
    """Root-mean-square difference, over networks, test inputs and steps, between each trained
    network and the infinitely wide network trained from the same initial outputs."""
    single = predict.gradient_descent_mse(getattr(e["k_dd"], kernel), e["y"], e["lr"], discrete=True)
    k_td = getattr(e["k_td"], kernel)
    steps = torch.tensor(STEPS, dtype=torch.float64)
    rms = []
    for width in WIDTHS:
        f0_train, f0_test, outputs = e["runs"][width]
        trained = torch.stack([outputs[s] for s in STEPS], 1)  # (M, T, m)
        infinite = torch.stack([
            single(steps, f0_train[i][:, None], f0_test[i][:, None], k_td).test[..., 0]
            for i in range(f0_train.shape[0])
        ])
        rms.append(float((trained - infinite).square().mean().sqrt()))
    return rms


def _slope(widths, values) -> float:
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def test_single_network_discrepancy_shrinks_as_one_over_sqrt_width(ensembles):
    """Lee et al. 2019 (Theorem 2.1): a network of width n trained at a learning rate below the
    critical one stays within O(n^-1/2) of its linearization, and the linearization's kernel is
    within O(n^-1/2) of the infinite-width one; so does the distance to the infinitely wide
    network started from the same f_0.

    Tolerance of the slope: the RMS over M = 256 networks has a relative standard error of about
    1/sqrt(2 M) = 4.4% (the networks are independent; their test outputs are correlated, so
    count one sample per network), i.e. 0.044 in log; the least-squares slope over log widths
    4.16, 5.55, 6.93 then has a standard error 0.044 / sqrt(sum (log n - mean)^2) = 0.022. The
    next order, D = a n^-1/2 (1 + b n^-1/2), adds b n^-1/2 to log D (0.125 b at n = 64), which
    tilts the fitted slope by 0.034 b; allowing |b| <= 2, |slope + 1/2| < 4 * 0.022 + 0.07 ~ 0.16.
    """
    rms = _discrepancies(ensembles, "ntk")
    assert rms[0] > rms[1] > rms[2], rms
    slope = _slope(WIDTHS, rms)
    assert abs(slope + 0.5) < 0.16, (slope, rms)
    # Negative control: against readout-only dynamics (the NNGP) the discrepancy does not shrink.
    wrong = _discrepancies(ensembles, "nngp")
    assert abs(_slope(WIDTHS, wrong) + 0.5) > 0.16, wrong


@pytest.mark.slow
def test_deep_relu_ensemble_matches_the_closed_form():
    """Two hidden ReLU layers of width 512: the same Monte Carlo comparison as above.

    ReLU's kink makes finite-width corrections larger during training (units that change sign
    move the kernel by O(n^-1/2) rather than O(1/n); Roberts, Yaida & Hanin 2022, ch. infinity):
    at this width, over 16 steps, they stay below the Monte Carlo error of 256 networks (27
    z-scores: the Bonferroni threshold of Z_MAX is only more conservative).
    """
    x_train, x_test, y = _data()
    infinite = _mlp(8, hidden=2, activation=nk.ReLU)
    k_dd = infinite.kernel(x_train)
    lr = 0.5 * predict.max_learning_rate(k_dd.ntk, y.numel())
    _, _, outputs = train_ensemble(
        _mlp(512, hidden=2, activation=nk.ReLU), x_train, y, x_test, lr, SLOW_STEPS, N_NETWORKS, seed=7
    )
    ensemble = predict.gradient_descent_mse_ensemble(infinite, x_train, y, lr, discrete=True)

    def closed_form(step, get="ntk"):
        mean, cov = ensemble(x_test, t=float(step), get=get, compute_cov=True)
        return mean[:, 0], cov

    z_mean, z_cov = _max_z(outputs, closed_form, SLOW_STEPS)
    assert z_mean < Z_MAX and z_cov < Z_MAX, (z_mean, z_cov)
    assert _max_z(outputs, lambda s: closed_form(s, get="nngp"), SLOW_STEPS)[0] > Z_MAX
