"""Bad input to ``ntkit.predict`` gets an ``NtkitError`` naming the function, the argument, the
offending shape or value, and the remedy (DESIGN.md, "Reliability").

The regexes pin those parts and leave the wording free. Where an error could be raised for the
wrong reason, a positive control shows that the corrected call works.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import ntkit as nk
from ntkit import predict


def _kernel(n: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n + 2, generator=generator, dtype=torch.float64)
    return a @ a.T / (n + 2)


def _y(n: int = 4, c: int = 2) -> torch.Tensor:
    return torch.linspace(-1, 1, n * c, dtype=torch.float64).reshape(n, c)


def _singular(n: int = 4) -> torch.Tensor:
    """A PSD kernel of rank 2: the NNGP of inputs that span two dimensions."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)[:n]
    return x @ x.T


# -- shapes ---------------------------------------------------------------------------------------


def test_targets_that_do_not_match_the_kernel():
    with pytest.raises(nk.NtkitError, match=r"^gradient_descent_mse: y_train has shape \(5, 2\) but the train-train kernel has 4 rows"):
        predict.gradient_descent_mse(_kernel(), torch.zeros(5, 2))
    with pytest.raises(nk.NtkitError, match=r"^gp_inference: y_train has shape \(4, 2, 1\)"):
        predict.gp_inference(_kernel(), torch.zeros(4, 2, 1))
    with pytest.raises(nk.NtkitError, match=r"^gradient_descent: y_train has shape \(3,\)"):
        predict.gradient_descent("mse", _kernel(), torch.zeros(3))
    net = nk.serial(nk.Dense(8), nk.ReLU(), nk.Dense(1))
    with pytest.raises(nk.NtkitError, match=r"^gradient_descent_mse_ensemble: y_train has shape \(3, 1\) but .* 4 rows"):
        predict.gradient_descent_mse_ensemble(net, torch.randn(4, 3), torch.zeros(3, 1))


def test_kernels_of_the_wrong_shape():
    with pytest.raises(nk.NtkitError, match=r"k_train_train has shape \(4, 3\); expected a square \(n, n\)"):
        predict.gradient_descent_mse(torch.zeros(4, 3), _y())
    with pytest.raises(nk.NtkitError, match=r"k_train_train has shape \(4,\); expected a matrix"):
        predict.gp_inference(torch.zeros(4), _y())
    predictor = predict.gradient_descent_mse(_kernel(), _y())
    with pytest.raises(nk.NtkitError, match=r"k_test_train has shape \(3, 5\); expected \(n_test, 4\).*test and the training inputs, in that order"):
        predictor(1.0, k_test_train=torch.zeros(3, 5))
    assert predictor(1.0, k_test_train=torch.zeros(3, 4)).test.shape == (3, 2)  # positive control
    gp = predict.gp_inference(_kernel(), _y())
    with pytest.raises(nk.NtkitError, match=r"k_test_test has shape \(2, 2\); expected \(3, 3\)"):
        gp(torch.zeros(3, 4), torch.eye(2))


def test_initial_outputs_of_the_wrong_shape():
    predictor = predict.gradient_descent_mse(_kernel(), _y())
    with pytest.raises(nk.NtkitError, match=r"fx_train_0 has shape \(4, 3\); expected \(4, 2\) \(or a scalar\)"):
        predictor(1.0, fx_train_0=torch.zeros(4, 3))
    with pytest.raises(nk.NtkitError, match=r"fx_test_0 has shape \(2, 2\); expected \(3, 2\)"):
        predictor(1.0, fx_test_0=torch.zeros(2, 2), k_test_train=torch.zeros(3, 4))
    with pytest.raises(nk.NtkitError, match="fx_test_0 was given without k_test_train"):
        predictor(1.0, fx_test_0=0.0)
    with pytest.raises(nk.NtkitError, match="nothing to predict"):
        predictor(1.0, fx_train_0=None)


def test_a_kernel_object_where_one_matrix_is_needed():
    k = nk.serial(nk.Dense(8), nk.ReLU(), nk.Dense(1)).kernel(torch.randn(4, 3))
    with pytest.raises(nk.NtkitError, match=r"k_train_train is an ntkit Kernel; pass one matrix: k\.ntk .* or k\.nngp"):
        predict.gradient_descent_mse(k, _y())
    nngp_only = nk.serial(nk.Dense(8), nk.ReLU(), nk.Dense(1)).kernel(torch.randn(4, 3), get="nngp")
    with pytest.raises(nk.NtkitError, match=r"k_train_train has no NTK .* get=\('nngp', 'ntk'\)"):
        predict.gp_inference(nngp_only, _y())(nngp_only, get="ntk")
    with pytest.raises(nk.NtkitError, match="covariance for get='ntk' needs both the NNGP and the NTK"):
        predict.gp_inference(_kernel(), _y())(torch.zeros(3, 4), torch.eye(3), get="ntk")


# -- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, where", [(math.nan, (1, 0)), (math.inf, (3, 1))])
def test_non_finite_targets_and_kernels(bad, where):
    y = _y()
    y[where] = bad
    pattern = rf"y_train contains NaN or inf \(first at index {re.escape(str(where))}, value {bad!r}\)"
    with pytest.raises(nk.NtkitError, match=pattern):
        predict.gradient_descent_mse(_kernel(), y)
    k = _kernel()
    k[2, 2] = bad
    with pytest.raises(nk.NtkitError, match=r"k_train_train contains NaN or inf \(first at index \(2, 2\)"):
        predict.gp_inference(k, _y())


def test_a_kernel_that_is_not_positive_definite_gets_a_diag_reg_that_works():
    k = _singular()
    gp = predict.gp_inference(k, _y())
    with pytest.raises(nk.NtkitError) as error:
        gp(k[:2])
    message = str(error.value)
    assert re.search(r"k_train_train \(nngp\) is not positive definite at diag_reg=0: its smallest eigenvalue is \S+ against a largest of 3", message), message
    suggested = float(re.search(r"pass diag_reg=(\S+) or larger", message).group(1))
    # Positive control: the suggested value makes the factorization succeed, and the fit is the
    # projection of y on the kernel's range up to the ridge (relative 1e-7: the suggestion is
    # sqrt(eps) lambda_max rounded up) and to round-off amplified by the condition number.
    fit = predict.gp_inference(k, _y(), diag_reg=suggested)(k)
    assert suggested <= 1e-7
    assert torch.allclose(fit, k @ torch.linalg.pinv(k) @ _y(), rtol=0, atol=1e-6)
    # The finite-time path (eigendecomposition) accepts a semi-definite kernel: its zero modes
    # simply do not move.
    assert torch.isfinite(predict.gradient_descent_mse(k, _y())(10.0, k_test_train=k).test).all()
    # A clearly indefinite kernel is refused there too, with the same advice.
    indefinite = torch.diag(torch.tensor([1.0, 1.0, 1.0, -0.5], dtype=torch.float64))
    with pytest.raises(nk.NtkitError, match=r"smallest eigenvalue is -0\.5 .* pass diag_reg=\S+ or larger"):
        predict.gradient_descent_mse(indefinite, _y())(1.0)


def test_a_kernel_that_is_not_symmetric():
    k = _kernel()
    k[0, 3] += 0.5
    with pytest.raises(nk.NtkitError, match=r"k_train_train is not symmetric: entry \(0, 3\) is \S+ but \(3, 0\) is"):
        predict.gradient_descent_mse(k, _y())


@pytest.mark.parametrize(
    "t, pattern",
    [
        (-1.0, r"t must be finite and >= 0, got -1\.0$"),
        (math.inf, r"t must be finite and >= 0, got inf \(t=None means the end of training\)"),
        (torch.tensor([1.0, math.nan]), r"t must be finite and >= 0, got nan at index 1"),
        (torch.tensor([]), r"t is empty"),
    ],
)
def test_bad_times(t, pattern):
    with pytest.raises(nk.NtkitError, match=r"^gradient_descent_mse: " + pattern):
        predict.gradient_descent_mse(_kernel(), _y())(t)
    with pytest.raises(nk.NtkitError, match=r"^gradient_descent: " + pattern):
        predict.gradient_descent("mse", _kernel(), _y())(t)


def test_discrete_times_must_be_whole_steps_and_the_ode_needs_finite_times():
    predictor = predict.gradient_descent_mse(_kernel(), _y(), discrete=True)
    with pytest.raises(nk.NtkitError, match=r"discrete=True, t counts gradient-descent steps .* got 2\.5 at index 1"):
        predictor(torch.tensor([1.0, 2.5]))
    assert predictor(torch.tensor([1.0, 2.0])).train.shape == (2, 4, 2)
    with pytest.raises(nk.NtkitError, match=r"t=None .* has no closed form for a general loss"):
        predict.gradient_descent("cross_entropy", _kernel(), _y())(None)


def test_unstable_learning_rate_names_the_limit():
    k, y = _kernel(), _y()
    limit = predict.max_learning_rate(k, y.numel())
    for call in (lambda p: p(3.0), lambda p: p(None)):
        with pytest.raises(nk.NtkitError, match=rf"learning_rate=\S+ is unstable .* < 2 \* y_train.numel\(\) / lambda_max = 2 \* 8 / \S+ = {limit:.4g}"):
            call(predict.gradient_descent_mse(k, y, learning_rate=1.5 * limit, discrete=True))
    # Gradient flow has no such limit.
    assert torch.isfinite(predict.gradient_descent_mse(k, y, learning_rate=1.5 * limit)(3.0).train).all()


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: predict.gradient_descent_mse(_kernel(), _y(), diag_reg=-1e-3), r"diag_reg must be a finite number >= 0, got -0\.001"),
        (lambda: predict.gradient_descent_mse(_kernel(), _y(), learning_rate=0), r"learning_rate must be a finite number > 0, got 0"),
        (lambda: predict.gp_inference(_kernel(), _y())(torch.zeros(1, 4), get="ntk-gp"), r"get must be 'nngp', 'ntk' or 'ntkgp', got 'ntk-gp'"),
        (lambda: predict.gradient_descent("hinge", _kernel(), _y()), r"unknown loss 'hinge'; choose one of \['cross_entropy', 'mse'\]"),
        (lambda: predict.gradient_descent("mse", _kernel(), _y(), momentum=1.0), r"momentum must be a number in \[0, 1\) or None, got 1\.0"),
        (lambda: predict.gradient_descent("mse", _kernel(), _y(), method="euler2"), r"unknown method 'euler2'; torchdiffeq offers"),
        (lambda: predict.gradient_descent(lambda f, y: f - y, _kernel(), _y())(1.0), r"loss\(f, y\) must return a scalar tensor"),
        (lambda: predict.max_learning_rate(_kernel(), y_train_size=0), r"y_train_size must be a positive integer"),
        (lambda: predict.gradient_descent_mse_ensemble("relu", torch.zeros(4, 3), _y()), r"net must be an ntkit network or a function kernel_fn\(x1, x2, get\), got str"),
    ],
)
def test_invalid_options(call, pattern):
    with pytest.raises(nk.NtkitError, match=pattern):
        call()


def test_ensemble_errors_name_the_mode_and_the_kernel():
    net = nk.serial(nk.Dense(8), nk.ReLU(), nk.Dense(1))
    predictor = predict.gradient_descent_mse_ensemble(net, torch.randn(4, 3), _y())
    with pytest.raises(nk.NtkitError, match=r"get must be 'ntk' or 'nngp', got 'ntkgp' \(use gp_inference for 'ntkgp'\)"):
        predictor(torch.randn(2, 3), get="ntkgp")
    with pytest.raises(nk.NtkitError, match=r"x2 has shape \(2, 5\)|x1 has 5 features"):
        predictor(torch.randn(2, 5))
    # Identical training inputs make the NNGP singular: the Cholesky path says so and suggests
    # a ridge; the suggested ridge works.
    x = torch.randn(3, 3).repeat(2, 1)[:4]
    singular = predict.gradient_descent_mse_ensemble(net, x, _y())
    with pytest.raises(nk.NtkitError, match=r"the train-train NNGP is not positive definite .* pass diag_reg=(\S+) or larger") as error:
        singular(torch.randn(2, 3), get="nngp")
    suggested = float(re.search(r"diag_reg=(\S+) or larger", str(error.value)).group(1))
    assert torch.isfinite(predict.gradient_descent_mse_ensemble(net, x, _y(), diag_reg=suggested)(torch.randn(2, 3), get="nngp")).all()
