"""``ntkit.predict`` against independent computations, from the kernels (no finite networks here).

Every closed form is checked against a computation that shares none of its code: explicit
integration of the ODE by scipy, an explicit loop of gradient-descent steps, the matrix
exponential (scipy.linalg.expm) propagating the Gaussian prior through the linear dynamics, and
numpy's linear solves for the limits. The finite networks trained in PyTorch are in
``test_predict_training.py``; the bad-input errors in ``test_predict_errors.py``.

Tolerances. ``EPS`` is float64's machine epsilon. A kernel of n <= 10 points with condition
number ``cond`` (reported by ``_data``, at most ~1e3 here) is factorized by backward-stable
algorithms (eigh, Cholesky), whose results carry a relative error of at most ~ n cond EPS
(Higham, "Accuracy and Stability of Numerical Algorithms", Thms. 10.4 and 7.2 with the
conditioning of the solve); ``TOL = 1e4 n cond EPS`` leaves a margin of 1e4 for the few
products and the exponentials around them, and is still below 1e-8 relative.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch

import ntkit as nk
from ntkit import predict

EPS = np.finfo(np.float64).eps


def _net(hidden: int = 2, activation=nk.Erf) -> nk.Serial:
    layers = []
    for _ in range(hidden):
        layers += [nk.Dense(64, W_std=1.7, b_std=0.2), activation()]
    return nk.serial(*layers, nk.Dense(2, W_std=1.7, b_std=0.2))


def _data(n: int = 6, m: int = 4, outputs: int = 2, seed: int = 0):
    """Training inputs on a circle, test inputs between them; random targets."""
    generator = torch.Generator().manual_seed(seed)
    angles = torch.cat([torch.arange(n) * 2 * math.pi / n, (torch.arange(m) + 0.37) * 2 * math.pi / m])
    x = torch.stack([angles.cos(), angles.sin(), 0.3 * torch.ones_like(angles)], 1).double()
    y = torch.randn(n, outputs, generator=generator, dtype=torch.float64)
    return x[:n], x[n:], y


@pytest.fixture(scope="module")
def problem():
    net = _net()
    x_train, x_test, y = _data()
    k_dd, k_td, k_tt = net.kernel(x_train), net.kernel(x_test, x_train), net.kernel(x_test)
    cond = float(torch.linalg.cond(k_dd.ntk))
    assert cond < 1e3  # the tolerances below assume it
    tol = 1e4 * x_train.shape[0] * cond * EPS
    return dict(net=net, x_train=x_train, x_test=x_test, y=y, k_dd=k_dd, k_td=k_td, k_tt=k_tt, tol=tol)


def _close(actual, expected, rtol: float):
    """|actual - expected| <= rtol * max|expected| elementwise (error relative to the scale)."""
    actual = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * max(np.abs(expected).max(), 1e-300))


# -- gradient_descent_mse against independent integrations ------------------------------------


@pytest.mark.parametrize("learning_rate, diag_reg", [(1.0, 0.0), (0.3, 1e-2)])
def test_mse_closed_form_matches_scipy_integration_of_the_ode(problem, learning_rate, diag_reg):
    """f' = -(lr / N) (Theta + ridge) (f - y) on train, and Theta(x, X) on test, integrated by
    scipy's DOP853 (an 8th-order method unrelated to eigh) from random initial outputs."""
    k, k_td, y = problem["k_dd"].ntk, problem["k_td"].ntk, problem["y"]
    n, c = y.shape
    generator = torch.Generator().manual_seed(1)
    f0, g0 = (torch.randn(s, c, generator=generator, dtype=torch.float64) for s in (n, k_td.shape[0]))
    theta = k.numpy() + diag_reg * np.trace(k.numpy()) / n * np.eye(n)  # the relative ridge
    size = y.numel()

    def field(_, state):
        f = state[: n * c].reshape(n, c)
        grad = (f - y.numpy()) * (learning_rate / size)
        return np.concatenate([-(theta @ grad).ravel(), -(k_td.numpy() @ grad).ravel()])

    times = np.array([0.0, 0.5, 3.0, 20.0, 150.0])
    # DOP853 at rtol 1e-12, atol 1e-14 on a contracting linear ODE of O(1) states: the global
    # error stays within ~1e3 local tolerances, 1e-11.
    solution = scipy.integrate.solve_ivp(
        field, (0, times[-1]), np.concatenate([f0.ravel(), g0.ravel()]), method="DOP853",
        t_eval=times, rtol=1e-12, atol=1e-14,
    ).y.T
    out = predict.gradient_descent_mse(k, y, learning_rate, diag_reg)(
        torch.tensor(times), f0, g0, k_td
    )
    assert out.train.shape == (5, n, c) and out.test.shape == (5, k_td.shape[0], c)
    _close(out.train, solution[:, : n * c].reshape(5, n, c), 1e-9)
    _close(out.test, solution[:, n * c:].reshape(5, -1, c), 1e-9)


def test_discrete_steps_equal_an_explicit_gradient_descent_loop(problem):
    """discrete=True is exactly t steps of f <- f - (lr / N) Theta (f - y) on the linear model."""
    k, k_td, y = problem["k_dd"].ntk, problem["k_td"].ntk, problem["y"]
    lr = 0.9 * predict.max_learning_rate(k, y.numel())  # large: the top mode oscillates
    f, g = torch.zeros_like(y), torch.zeros(k_td.shape[0], y.shape[1], dtype=torch.float64)
    loop = {}
    for step in range(41):
        loop[step] = (f.clone(), g.clone())
        grad = (f - y) * (lr / y.numel())
        f, g = f - k @ grad, g - k_td @ grad
    steps = torch.tensor([0, 1, 7, 40])
    out = predict.gradient_descent_mse(k, y, lr, discrete=True)(steps, 0.0, 0.0, k_td)
    for i, s in enumerate(steps.tolist()):
        # 40 contracting steps each round to a few eps of |f|: the loop's error is < 40 * 8 EPS.
        _close(out.train[i], loop[s][0].numpy(), problem["tol"])
        _close(out.test[i], loop[s][1].numpy(), problem["tol"])


def test_discrete_steps_approach_gradient_flow_as_the_learning_rate_shrinks(problem):
    """(1 - lr lambda / N)^(T / lr) = exp(-lambda T / N - lr lambda^2 T / (2 N^2) + O(lr^2)): the
    error is first order in lr and halves with it, to within the second-order term, a relative
    lr lambda_max / N < 3% here."""
    k, k_td, y = problem["k_dd"].ntk, problem["k_td"].ntk, problem["y"]
    flow = predict.gradient_descent_mse(k, y)(10.0, 0.0, 0.0, k_td).test
    errors = []
    for lr in (0.02, 0.01, 0.005):
        steps = round(10.0 / lr)
        discrete = predict.gradient_descent_mse(k, y, lr, discrete=True)(float(steps), 0.0, 0.0, k_td).test
        errors.append(float((discrete - flow).abs().max()))
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(1.9 < r < 2.1 for r in ratios), (errors, ratios)


def test_ode_solver_with_the_mse_loss_reproduces_the_closed_form(problem):
    """gradient_descent('mse') integrates with torchdiffeq what gradient_descent_mse solves."""
    k, k_td, y = problem["k_dd"].ntk, problem["k_td"].ntk, problem["y"]
    t = torch.tensor([[4.0, 0.0], [30.0, 4.0]])  # any shape and order, repeats allowed
    ode = predict.gradient_descent("mse", k, y, learning_rate=0.7)(t, 0.0, 0.0, k_td)
    exact = predict.gradient_descent_mse(k, y, learning_rate=0.7)(t, 0.0, 0.0, k_td)
    assert ode.test.shape == exact.test.shape == (2, 2, 4, 2)
    # dopri5 at rtol 1e-8, atol 1e-10: a few hundred steps of a contracting ODE of O(1) outputs
    # keep the global error under 1e3 local tolerances, 1e-5 relative.
    _close(ode.train, exact.train.numpy(), 1e-5)
    _close(ode.test, exact.test.numpy(), 1e-5)


def test_cross_entropy_dynamics_match_scipy(problem):
    """f' = -lr Theta (softmax(f) - y) / N for the cross-entropy of neural-tangents' example."""
    k, k_td = problem["k_dd"].ntk, problem["k_td"].ntk
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    y = torch.nn.functional.one_hot(labels, 3).double()
    n, c = y.shape
    size = y.numel()

    def softmax(f):
        e = np.exp(f - f.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def field(_, state):
        grad = (softmax(state[: n * c].reshape(n, c)) - y.numpy()) / size
        return np.concatenate([-(k.numpy() @ grad).ravel(), -(k_td.numpy() @ grad).ravel()])

    times = np.array([1.0, 10.0, 100.0])
    solution = scipy.integrate.solve_ivp(
        field, (0, 100.0), np.zeros((n + k_td.shape[0]) * c), method="DOP853", t_eval=times,
        rtol=1e-12, atol=1e-14,
    ).y.T
    out = predict.gradient_descent("cross_entropy", k, y)(torch.tensor(times), 0.0, 0.0, k_td)
    _close(out.train, solution[:, : n * c].reshape(3, n, c), 1e-5)  # dopri5 tolerance, as above
    _close(out.test, solution[:, n * c:].reshape(3, -1, c), 1e-5)
    # A callable loss gives the same, and the wrong normalization (torch's mean over examples
    # only, c times larger) does not: the check can fail.
    custom = predict.gradient_descent(lambda f, t: -(t * torch.log_softmax(f, -1)).mean(), k, y)
    _close(custom(torch.tensor(times), 0.0, 0.0, k_td).test, solution[:, n * c:].reshape(3, -1, c), 1e-5)
    wrong = predict.gradient_descent(lambda f, t: torch.nn.functional.cross_entropy(f, t), k, y)
    assert not np.allclose(wrong(torch.tensor(times), 0.0, 0.0, k_td).test.numpy(), solution[:, n * c:].reshape(3, -1, c), atol=1e-3)


def test_momentum_dynamics_match_scipy(problem):
    """Heavy ball in neural-tangents' units: f'' = -Theta grad - (1 - mu)/sqrt(lr) f', time
    sqrt(lr) t, at rest at t = 0."""
    k, y = problem["k_dd"].ntk, problem["y"]
    lr, mu = 0.5, 0.9
    n, c = y.shape
    friction = (1 - mu) / math.sqrt(lr)

    def field(_, state):
        f, v = state[: n * c].reshape(n, c), state[n * c:].reshape(n, c)
        accel = -(k.numpy() @ (f - y.numpy())) / y.numel() - friction * v
        return np.concatenate([v.ravel(), accel.ravel()])

    times = np.array([2.0, 20.0])
    solution = scipy.integrate.solve_ivp(
        field, (0, math.sqrt(lr) * 20.0), np.zeros(2 * n * c), method="DOP853",
        t_eval=math.sqrt(lr) * times, rtol=1e-12, atol=1e-14,
    ).y.T
    out = predict.gradient_descent("mse", k, y, learning_rate=lr, momentum=mu)(torch.tensor(times))
    _close(out.train, solution[:, : n * c].reshape(2, n, c), 1e-5)
    assert out.test is None


# -- the ensemble: mean and covariance --------------------------------------------------------


def _propagated(k_dd, k_td, k_tt, y, lr, t, get):
    """Mean and covariance of f_t(x_test) by pushing the Gaussian prior through the dynamics.

    Independent of ntkit's formulas: f_t is affine in f_0 (Lee et al. 2019, eqs. 10-11),
    f_t(X) = E f_0(X) + (I - E) y, f_t(x) = f_0(x) - Theta(x, X) Theta^{-1} (I - E)(f_0(X) - y),
    with E = expm(-lr Theta t / N) from scipy (Pade, no eigendecomposition), and f_0 ~ N(0, K)
    jointly on train and test. For "nngp" the tangent kernel is the NNGP itself.
    """
    theta_dd = (k_dd.nngp if get == "nngp" else k_dd.ntk).numpy()
    theta_td = (k_td.nngp if get == "nngp" else k_td.ntk).numpy()
    n = theta_dd.shape[0]
    e = scipy.linalg.expm(-lr * t / y.numel() * theta_dd)
    a = theta_td @ np.linalg.solve(theta_dd, np.eye(n) - e)  # (m, n)
    mean = a @ y.numpy()
    # f_t(x) = [ -a , I ] (f_0(X), f_0(x)) + a y: covariance M K_joint M^T.
    joint = np.block([[k_dd.nngp.numpy(), k_td.nngp.numpy().T], [k_td.nngp.numpy(), k_tt.nngp.numpy()]])
    m_map = np.concatenate([-a, np.eye(a.shape[0])], axis=1)
    return mean, m_map @ joint @ m_map.T, a


@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_ensemble_mean_and_covariance_equal_the_propagated_prior(problem, get):
    p = problem
    predictor = predict.gradient_descent_mse_ensemble(p["net"], p["x_train"], p["y"], learning_rate=0.5)
    times = [0.3, 5.0, 60.0]
    out = predictor(p["x_test"], t=torch.tensor(times, dtype=torch.float64), get=get, compute_cov=True)
    assert out.mean.shape == (3, 4, 2) and out.covariance.shape == (3, 4, 4)
    for i, t in enumerate(times):
        mean, cov, a = _propagated(p["k_dd"], p["k_td"], p["k_tt"], p["y"], 0.5, t, get)
        _close(out.mean[i], mean, p["tol"])
        _close(out.covariance[i], cov, p["tol"])
        # Negative control: without the cross terms -(A K(X, x) + transpose) the covariance is
        # far outside the tolerance, so the comparison above can fail.
        partial = p["k_tt"].nngp.numpy() + a @ p["k_dd"].nngp.numpy() @ a.T
        assert np.abs(partial - cov).max() > 1e6 * p["tol"] * np.abs(cov).max()


def test_ensemble_on_the_training_set_is_the_propagated_prior(problem):
    """x_test=None: f_t(X) = E f_0(X) + (I - E) y, covariance E K E (NTK) and K E^2 (NNGP)."""
    p = problem
    predictor = predict.gradient_descent_mse_ensemble(p["net"], p["x_train"], p["y"])
    for get in ("ntk", "nngp"):
        theta = (p["k_dd"].nngp if get == "nngp" else p["k_dd"].ntk).numpy()
        e = scipy.linalg.expm(-4.0 / p["y"].numel() * theta)
        out = predictor(None, t=4.0, get=get, compute_cov=True)
        _close(out.mean, (np.eye(6) - e) @ p["y"].numpy(), p["tol"])
        _close(out.covariance, e @ p["k_dd"].nngp.numpy() @ e, p["tol"])
        end = predictor(None, t=None, get=get, compute_cov=True)  # N(y, 0) at the end
        assert torch.equal(end.mean, p["y"]) and not end.covariance.any()


def test_long_training_reaches_the_end_of_training_and_gp_inference(problem):
    """t -> infinity: the eigenbasis formulas at t = 1e6 N / lambda_min agree with t=None (a
    Cholesky solve), which is gp_inference: the exact NNGP posterior and Lee et al.'s NTK limit."""
    p = problem
    predictor = predict.gradient_descent_mse_ensemble(p["net"], p["x_train"], p["y"], diag_reg=1e-3)
    gp = predict.gp_inference(p["k_dd"], p["y"], diag_reg=1e-3)
    for get in ("ntk", "nngp"):
        lam_min = float(torch.linalg.eigvalsh(getattr(p["k_dd"], get))[0])
        late = predictor(p["x_test"], t=60 * p["y"].numel() / lam_min, get=get, compute_cov=True)
        end = predictor(p["x_test"], t=None, get=get, compute_cov=True)
        # exp(-60) ~ 1e-26: the late and the end states agree to the factorizations' round-off.
        _close(late.mean, end.mean.numpy(), p["tol"])
        _close(late.covariance, end.covariance.numpy(), p["tol"])
        posterior = gp(p["k_td"], p["k_tt"], get=get)
        _close(end.mean, posterior.mean.numpy(), p["tol"])
        _close(end.covariance, posterior.covariance.numpy(), p["tol"])


def test_gp_inference_equals_the_textbook_formulas(problem):
    """numpy.linalg.solve of Rasmussen & Williams eqs. 2.23-2.24 (NNGP, NTK-GP) and Lee et al.
    2019 eq. 16 at t = infinity (NTK), with the relative ridge on the inverted kernel only."""
    p = problem
    k, kt, ktt, y = p["k_dd"], p["k_td"], p["k_tt"], p["y"].numpy()
    reg = 1e-2
    gp = predict.gp_inference(k, p["y"], diag_reg=reg)

    def regularized(m):
        return m + reg * np.trace(m) / m.shape[0] * np.eye(m.shape[0])

    for get, name in (("nngp", "nngp"), ("ntkgp", "ntk")):
        kk, ks, kss = (getattr(x, name).numpy() for x in (k, kt, ktt))
        out = gp(kt, ktt, get=get)
        _close(out.mean, ks @ np.linalg.solve(regularized(kk), y), p["tol"])
        _close(out.covariance, kss - ks @ np.linalg.solve(regularized(kk), ks.T), p["tol"])
    theta, theta_s = k.ntk.numpy(), kt.ntk.numpy()
    a = theta_s @ np.linalg.inv(regularized(theta))
    nngp, nngp_s = k.nngp.numpy(), kt.nngp.numpy()
    expected = ktt.nngp.numpy() + a @ nngp @ a.T - a @ nngp_s.T - nngp_s @ a.T
    out = gp(kt, ktt, get="ntk")
    _close(out.mean, a @ y, p["tol"])
    _close(out.covariance, expected, p["tol"])
    # Plain matrices where one kernel suffices give the same, and the mean alone is a tensor.
    _close(gp(kt.ntk, get="ntk"), (a @ y), p["tol"])
    _close(predict.gp_inference(k.nngp, p["y"], diag_reg=reg)(kt.nngp, ktt.nngp).covariance,
           gp(kt, ktt).covariance.numpy(), p["tol"])


@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_covariances_are_symmetric_and_positive_semidefinite(problem, get):
    """Covariances of f_t on train and test inputs together, at every time: symmetric exactly,
    eigenvalues >= -n EPS max|Sigma| (the round-off of the products that form them)."""
    p = problem
    x_all = torch.cat([p["x_train"], p["x_test"]])
    predictor = predict.gradient_descent_mse_ensemble(p["net"], p["x_train"], p["y"], diag_reg=1e-4)
    for t in (None, 0.0, 1.0, 10.0, 1e3):
        cov = predictor(x_all, t=t, get=get, compute_cov=True).covariance
        assert torch.equal(cov, cov.T)
        evals = torch.linalg.eigvalsh(cov)
        assert float(evals[0]) >= -100 * cov.shape[0] * EPS * float(cov.abs().max()), (t, evals)
    # Negative control: the NTK in place of the NNGP inside the covariance is not a covariance
    # of these outputs, and the test above would see it: it has a negative eigenvalue.
    wrong = p["k_tt"].nngp - 2 * p["k_td"].ntk @ torch.linalg.solve(p["k_dd"].ntk, p["k_td"].ntk.T)
    assert float(torch.linalg.eigvalsh(wrong)[0]) < 0


def test_kernel_level_and_network_level_predictions_agree(problem):
    p = problem
    net, x, xt, y = p["net"], p["x_train"], p["x_test"], p["y"]
    ensemble = predict.gradient_descent_mse_ensemble(net, x, y, learning_rate=2.0, diag_reg=1e-3)
    single = predict.gradient_descent_mse(p["k_dd"].ntk, y, learning_rate=2.0, diag_reg=1e-3)
    t = torch.tensor([1.0, 10.0])
    # The ensemble mean is the single-network prediction from zero initial outputs.
    _close(ensemble(xt, t=t), single(t, None, None, p["k_td"].ntk).test.numpy(), p["tol"])
    _close(ensemble(xt), single(None, None, None, p["k_td"].ntk).test.numpy(), p["tol"])
    # A precomputed-kernel function (inputs are indices into stored matrices) gives the same.
    x_all = torch.cat([x, xt])
    stored = net.kernel(x_all)

    def kernel_fn(i, j, get):
        j = i if j is None else j
        return stored.replace(nngp=stored.nngp[i][:, j], ntk=stored.ntk[i][:, j])

    from_indices = predict.gradient_descent_mse_ensemble(
        kernel_fn, torch.arange(6), y, learning_rate=2.0, diag_reg=1e-3
    )
    for get in ("ntk", "nngp"):
        a = from_indices(torch.arange(6, 10), t=t, get=get, compute_cov=True)
        b = ensemble(xt, t=t, get=get, compute_cov=True)
        _close(a.mean, b.mean.numpy(), p["tol"])
        _close(a.covariance, b.covariance.numpy(), p["tol"])


def test_relative_and_absolute_ridges_are_the_same_ridge(problem):
    k, k_td, y = problem["k_dd"].ntk, problem["k_td"].ntk, problem["y"]
    mean_diag = float(torch.trace(k)) / k.shape[0]
    relative = predict.gradient_descent_mse(k, y, diag_reg=0.1)
    absolute = predict.gradient_descent_mse(k, y, diag_reg=0.1 * mean_diag, diag_reg_absolute_scale=True)
    for t in (None, 3.0):
        _close(relative(t, 0.0, 0.0, k_td).test, absolute(t, 0.0, 0.0, k_td).test.numpy(), problem["tol"])
    # ... and differs from an absolute ridge of 0.1 (the mean diagonal is not 1 here).
    other = predict.gradient_descent_mse(k, y, diag_reg=0.1, diag_reg_absolute_scale=True)
    assert abs(mean_diag - 1) > 0.1
    assert not torch.allclose(other(None, 0.0, 0.0, k_td).test, relative(None, 0.0, 0.0, k_td).test)


def test_time_shapes_one_dimensional_targets_and_initial_outputs(problem):
    k, k_td = problem["k_dd"].ntk, problem["k_td"].ntk
    y = problem["y"][:, 0]
    predictor = predict.gradient_descent_mse(k, y)
    out = predictor(torch.full((2, 3), 5.0), fx_train_0=0.5, k_test_train=k_td)
    assert out.train.shape == (2, 3, 6) and out.test.shape == (2, 3, 4)
    scalar = predictor(5.0, fx_train_0=torch.full((6,), 0.5), k_test_train=k_td)
    assert scalar.train.shape == (6,) and torch.equal(out.train[1, 2], scalar.train)
    # fx_train_0=None skips the training outputs; the test outputs then start from f_0(X) = 0.
    only_test = predictor(5.0, fx_train_0=None, k_test_train=k_td)
    assert only_test.train is None
    _close(only_test.test, predictor(5.0, 0.0, 0.0, k_td).test.numpy(), problem["tol"])
    # At t = 0 nothing has moved, exactly.
    f0 = torch.linspace(-1, 1, 6, dtype=torch.float64)
    start = predictor(0.0, f0, 0.25, k_td)
    assert torch.equal(start.train, f0) and torch.equal(start.test, torch.full((4,), 0.25, dtype=torch.float64))


def test_factorizations_are_computed_once(problem, monkeypatch):
    calls = {"eigh": 0, "cholesky_ex": 0}
    for name in calls:
        original = getattr(torch.linalg, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch.linalg, name, counting)
    p = problem
    predictor = predict.gradient_descent_mse_ensemble(p["net"], p["x_train"], p["y"])
    for t in (1.0, torch.tensor([2.0, 3.0]), None, None, 5.0):
        predictor(p["x_test"], t=t, compute_cov=True)
    assert calls == {"eigh": 1, "cholesky_ex": 1}


def test_float32_follows_float64_within_its_precision(problem):
    p = problem
    outs = {}
    for dtype in (torch.float64, torch.float32):
        predictor = predict.gradient_descent_mse_ensemble(p["net"], p["x_train"], p["y"], diag_reg=1e-3, dtype=dtype)
        outs[dtype] = [predictor(p["x_test"], t=t, compute_cov=True) for t in (None, 7.0)]
        assert outs[dtype][0].mean.dtype == dtype
    eps32 = torch.finfo(torch.float32).eps
    for a, b in zip(outs[torch.float32], outs[torch.float64]):
        # float32 kernels carry ~1e2 eps32 relative error (test_float32_safety.py); the solve
        # multiplies it by cond <= 1e3: 1e5 eps32 ~ 1e-2 relative.
        _close(a.mean.double(), b.mean.numpy(), 1e5 * eps32)
        _close(a.covariance.double(), b.covariance.numpy(), 1e5 * eps32)


def test_max_learning_rate_is_the_stability_edge_of_discrete_descent(problem):
    """Steps at 0.99 of the limit converge, at 1.01 they diverge, with and without momentum."""
    k, y = problem["k_dd"].ntk, problem["y"]
    size = y.numel()
    top = float(np.linalg.eigvalsh(k.numpy())[-1])
    assert predict.max_learning_rate(k, size) == pytest.approx(2 * size / top, rel=1e-12)
    assert predict.max_learning_rate(problem["k_dd"], size) == predict.max_learning_rate(k, size)
    for mu in (0.0, 0.5):
        limit = predict.max_learning_rate(k, size, momentum=mu)
        assert limit == pytest.approx(2 * (1 + mu) * size / top, rel=1e-12)
        for factor, converges in ((0.99, True), (1.01, False)):
            r, v = -y, torch.zeros_like(y)  # heavy ball on the residual r = f - y
            for _ in range(3000):
                v = mu * v - factor * limit / size * (k @ r)
                r = r + v
            assert bool(r.abs().max() < 1) == converges, (mu, factor, float(r.abs().max()))
    # The closed form refuses the unstable rate, and accepts the stable one.
    lr = predict.max_learning_rate(k, size)
    predict.gradient_descent_mse(k, y, 0.99 * lr, discrete=True)(10.0)
    with pytest.raises(nk.NtkitError, match="unstable"):
        predict.gradient_descent_mse(k, y, 1.01 * lr, discrete=True)(10.0)


def test_device_follows_the_inputs(problem, device):
    p = problem
    x, xt, y = (p[name].to(device) for name in ("x_train", "x_test", "y"))
    out = predict.gradient_descent_mse_ensemble(p["net"], x, y)(xt, t=torch.tensor([1.0, 9.0]), compute_cov=True)
    assert out.mean.device.type == device.type and out.covariance.device.type == device.type
    cpu = predict.gradient_descent_mse_ensemble(p["net"], p["x_train"], p["y"])(p["x_test"], t=torch.tensor([1.0, 9.0]), compute_cov=True)
    _close(out.mean.cpu(), cpu.mean.numpy(), p["tol"])
    _close(out.covariance.cpu(), cpu.covariance.numpy(), p["tol"])
    k = p["k_dd"].ntk.to(device)
    ode = predict.gradient_descent("cross_entropy", k, torch.eye(6, 2, dtype=torch.float64, device=device))(2.0)
    assert ode.train.device.type == device.type
