"""ntkit.predict on inputs that once went wrong or were not covered: numerically singular
kernels, inputs in neural-tangents' idioms (NumPy scalars, nested lists, its argument order),
discrete-step ensembles and neural-tangents' conventions.

Every expected value is computed independently inside the test (pseudo-inverse limits, scipy's
expm, explicit gradient-descent iterations in torch).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.linalg
import torch

import ntkit as nk
from ntkit import predict


def _net():
    return nk.serial(
        nk.Dense(512, W_std=1.5, b_std=0.05), nk.ReLU(),
        nk.Dense(512, W_std=1.5, b_std=0.05), nk.ReLU(),
        nk.Dense(1, W_std=1.5, b_std=0.05),
    )


def _duplicated(seed: int):
    """20 training inputs of which one (j) is an exact copy of another (i), 5 test inputs, 2
    outputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(20, 10, dtype=torch.float64, generator=g)
    x_test = torch.randn(5, 10, dtype=torch.float64, generator=g)
    i, j = torch.randperm(20, generator=g)[:2].tolist()
    x[j] = x[i]
    y = torch.randn(20, 2, dtype=torch.float64, generator=g)
    return x, x_test, y, (i, j)


def _pinv_limit(k, k_td, y):
    """The ridge -> 0 limit of kernel regression, K_*X K^+ y (well defined for a singular K)."""
    return k_td @ torch.linalg.pinv(k, hermitian=True, rtol=1e-10) @ y


# -- numerically singular kernels --------------------------------------------------------------


@pytest.mark.parametrize("seed", [16, 25])  # a pivot of ~24 eps once slipped past eps * max K_ii
def test_an_exact_duplicate_is_refused_or_solved_at_the_end_of_training(seed):
    """t=None with an exactly duplicated training input: either the documented NtkitError
    (a Cholesky pivot that is rounding noise) or the ridge -> 0 limit; never a silent O(1) error."""
    x, x_test, y, _ = _duplicated(seed)
    net = _net()
    k, k_td = net.kernel(x).ntk, net.kernel(x_test, x).ntk
    try:
        out = predict.gradient_descent_mse(k, y)(None, 0.0, None, k_td).test
    except nk.NtkitError:
        return
    limit = _pinv_limit(k, k_td, y)
    assert float((out - limit).abs().max()) <= 1e-6 * float(limit.abs().max())


@pytest.mark.parametrize("t", [1e14, 1e16, 1e20])
def test_very_long_training_with_a_duplicate_stays_at_the_limit(t):
    """A duplicated input's null direction, given an eigenvalue at the level of eigh's rounding
    (1e-14 of the largest, positive whatever the rounding): g = (1 - e^{-lambda t/N}) / lambda
    must not grow to 1/lambda and multiply the rounding of K(x, X) v; the outputs stay at the
    ridge -> 0 limit."""
    x, x_test, y, (i, j) = _duplicated(0)
    net = _net()
    k, k_td = net.kernel(x, get="nngp").nngp, net.kernel(x_test, x, get="nngp").nngp
    u = torch.zeros(x.shape[0], dtype=torch.float64)
    u[i], u[j] = 2**-0.5, -(2**-0.5)
    k = k + 1e-14 * float(torch.linalg.eigvalsh(k)[-1]) * torch.outer(u, u)
    out = predict.gradient_descent_mse(k, y)(t, 0.0, None, k_td).test
    limit = _pinv_limit(k, k_td, y)
    assert float((out - limit).abs().max()) <= 1e-6 * float(limit.abs().max())


@pytest.mark.parametrize("t", [1.0, None])  # once an OverflowError in suggest_diag_reg
def test_a_kernel_with_a_negative_trace_gets_an_ntkit_error(t):
    """A relative ridge cannot help a kernel whose mean diagonal is <= 0: the advice is an
    absolute one, which works."""
    k = torch.diag(torch.tensor([1.0, 1.0, -3.0], dtype=torch.float64))
    k_td = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(nk.NtkitError, match=r"diag_reg_absolute_scale=True with diag_reg=\S+ or larger") as error:
        predict.gradient_descent_mse(k, torch.ones(3))(t, 0.0, None, k_td)
    with pytest.raises(nk.NtkitError, match="diag_reg_absolute_scale=True"):
        predict.gp_inference(k, torch.ones(3))(k_td)
    suggested = float(re.search(r"with diag_reg=(\S+) or larger", str(error.value)).group(1))
    fixed = predict.gradient_descent_mse(k, torch.ones(3), 1.0, suggested, True)(t, 0.0, None, k_td).test
    assert torch.isfinite(fixed).all()


def test_an_all_zero_kernel_is_told_to_use_an_absolute_ridge():
    with pytest.raises(nk.NtkitError, match="diag_reg_absolute_scale=True"):
        predict.gp_inference(torch.zeros(3, 3, dtype=torch.float64), torch.ones(3))(torch.ones(2, 3))


# -- input conventions -------------------------------------------------------------------------


def test_nested_lists_compute_in_float64():  # torch.as_tensor(list) alone would be float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64, generator=g)
    k, y = a @ a.T + torch.eye(6, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64, generator=g)
    out = predict.gradient_descent_mse(k.tolist(), y.tolist())(1.0).train
    assert out.dtype == torch.float64
    ref = predict.gradient_descent_mse(k, y)(1.0).train
    assert torch.allclose(out, ref, rtol=0, atol=1e-13)


def test_numpy_scalars_are_accepted_like_python_numbers():
    """neural-tangents takes y_train.size / np.prod(shape) (np.int64) and np.float32 rates."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64, generator=g)
    k, y = a @ a.T, torch.randn(6, 2, dtype=torch.float64, generator=g)
    assert predict.max_learning_rate(k, np.int64(12)) == predict.max_learning_rate(k, 12)
    ref = predict.gradient_descent_mse(k, y, 0.5, 1e-3)(2.0).train
    out = predict.gradient_descent_mse(k, y, np.float32(0.5), np.float32(1e-3))(2.0).train
    assert torch.allclose(out, ref, rtol=1e-6)


def test_calls_in_neural_tangents_argument_order_are_refused():
    """NT's 6th positional argument of gradient_descent_mse is trace_axes (bool((-1,)) is True),
    its ensemble predictor takes (t, x_test, ...) and its GP predictor (get, k_test_train, ...):
    none of them may run with the arguments misread."""
    k = torch.eye(3, dtype=torch.float64)
    with pytest.raises(TypeError):
        predict.gradient_descent_mse(k, torch.ones(3, 2), 1.0, 0.0, False, (-1,))
    with pytest.raises(nk.NtkitError, match="discrete must be True or False"):
        predict.gradient_descent_mse(k, torch.ones(3, 2), discrete=(-1,))
    net, x, x_test, y = _problem()
    with pytest.raises(TypeError):
        predict.gradient_descent_mse_ensemble(net, x, y)(None, x_test)
    k_train, k_test = net.kernel(x).nngp, net.kernel(x_test, x).nngp
    with pytest.raises(nk.NtkitError, match="neural-tangents' order is"):
        predict.gp_inference(k_train, y)(None, k_test)
    with pytest.raises(nk.NtkitError, match="neural-tangents' order is"):
        predict.gp_inference(k_train, y)("nngp", k_test)


# -- discrete ensembles and neural-tangents' conventions ----------------------------------------


def _problem():
    net = _net()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 10, dtype=torch.float64, generator=g)
    x_test = torch.randn(4, 10, dtype=torch.float64, generator=g)
    y = torch.randn(12, 3, dtype=torch.float64, generator=g)
    return net, x, x_test, y


@pytest.mark.parametrize("get", ["ntk", "nngp"])
@pytest.mark.parametrize("frac", [0.4, 0.9])  # 0.9: the top mode is in the 1 <= x < 2 branch
def test_discrete_ensemble_equals_explicit_propagation_of_the_prior(get, frac):
    """f_{s+1} = f_s - (lr/N) Theta(., X)(f_s(X) - y) on train and test jointly is affine in
    f_0 ~ N(0, K_joint): f_s = A_s f_0 + b_s, mean b_s, covariance A_s K_joint A_s^T."""
    net, x, x_test, y = _problem()
    xs = torch.cat([x, x_test])
    kj = net.kernel(xs)
    nngp, theta = kj.nngp, getattr(kj, get)
    n, size = x.shape[0], y.numel()
    lr = frac * predict.max_learning_rate(theta[:n, :n], size)
    steps = [0, 1, 6, 30]
    ensemble = predict.gradient_descent_mse_ensemble(net, x, y, lr, discrete=True)
    out_test = ensemble(x_test, t=torch.tensor(steps), get=get, compute_cov=True)
    out_train = ensemble(None, t=torch.tensor(steps), get=get, compute_cov=True)
    a = torch.eye(xs.shape[0], dtype=torch.float64)
    b = torch.zeros(xs.shape[0], y.shape[1], dtype=torch.float64)
    for s in range(max(steps) + 1):
        if s in steps:
            i = steps.index(s)
            for sl, out in ((slice(n, None), out_test), (slice(0, n), out_train)):
                cov = a[sl] @ nngp @ a[sl].T
                assert torch.allclose(out.mean[i], b[sl], rtol=0, atol=1e-11 * float(b.abs().max() + 1))
                assert torch.allclose(out.covariance[i], cov, rtol=0, atol=1e-11 * float(nngp.abs().max()))
        a = a - lr / size * theta[:, :n] @ a[:n]
        b = b - lr / size * theta[:, :n] @ (b[:n] - y)


def test_a_full_output_kernel_flattened_is_neural_tangents_trace_axes_empty():
    """An empirical NTK with trace_axes=() (shape (N, N, C, C)) used through the flattening
    (n c, n' c') and y -> (n c, 1): gradient flow on ||f - y||^2 / (2 N C) in closed form (expm)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 10, dtype=torch.float64, generator=g)
    x_test = torch.randn(2, 10, dtype=torch.float64, generator=g)
    y = torch.randn(6, 3, dtype=torch.float64, generator=g)
    k = nk.empirical_ntk(model, x, trace_axes=()).detach()
    k_td = nk.empirical_ntk(model, x_test, x, trace_axes=()).detach()
    n, c, m = 6, 3, 2
    k2 = k.permute(0, 2, 1, 3).reshape(n * c, n * c)
    k2_td = k_td.permute(0, 2, 1, 3).reshape(m * c, n * c)
    with torch.no_grad():
        f0, g0 = model(x), model(x_test)
    lr, t = 0.7, 5.0
    out = predict.gradient_descent_mse(k2, y.reshape(-1, 1), lr)(t, f0.reshape(-1, 1), g0.reshape(-1, 1), k2_td)
    theta = k2.numpy()
    e = scipy.linalg.expm(-lr * t / y.numel() * theta)
    r0 = (f0 - y).reshape(-1, 1).numpy()
    train = y.reshape(-1, 1).numpy() + e @ r0
    test = g0.reshape(-1, 1).numpy() - k2_td.numpy() @ np.linalg.solve(theta, (np.eye(n * c) - e) @ r0)
    np.testing.assert_allclose(out.train.numpy(), train, atol=1e-10)
    np.testing.assert_allclose(out.test.numpy(), test, atol=1e-8)


def test_the_nngp_ensemble_with_a_ridge_is_the_noisy_gp_posterior():
    """neural-tangents' convention, which ntkit follows: with diag_reg, get='nngp' inverts
    K + lambda I in both places, i.e. the GP posterior with noise lambda (not the covariance of
    the regularized dynamics started from the unregularized prior)."""
    net, x, x_test, y = _problem()
    k, k_td, k_tt = net.kernel(x).nngp, net.kernel(x_test, x).nngp, net.kernel(x_test).nngp
    ridge = 1e-2 * float(torch.trace(k)) / k.shape[0]
    kr = k + ridge * torch.eye(k.shape[0], dtype=torch.float64)
    out = predict.gradient_descent_mse_ensemble(net, x, y, diag_reg=1e-2)(x_test, get="nngp", compute_cov=True)
    assert torch.allclose(out.mean, k_td @ torch.linalg.solve(kr, y), atol=1e-12)
    assert torch.allclose(out.covariance, k_tt - k_td @ torch.linalg.solve(kr, k_td.T), atol=1e-12)
    late = predict.gradient_descent_mse_ensemble(net, x, y, diag_reg=1e-2)(x_test, t=1e9, get="nngp", compute_cov=True)
    assert torch.allclose(late.covariance, out.covariance, atol=1e-10)
