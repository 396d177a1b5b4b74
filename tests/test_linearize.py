"""linearize and taylor_expand: values at theta0, exact linearity in J, and training dynamics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.empirical import empirical_ntk, linearize, taylor_expand

from _empirical_models import build
from _empirical_reference import full_jacobian, relative_error

EXACT = 1e-10  # float64 round-off through a few layers, with a wide margin (see test_empirical)


def _direction(module: nn.Module, scale: float) -> list[torch.Tensor]:
    """A fixed, deterministic direction in parameter space, one tensor per parameter."""
    return [scale * torch.sin(torch.arange(p.numel(), dtype=p.dtype) * 0.7 + i).reshape(p.shape)
            for i, p in enumerate(module.params)]


def _move(module, direction, factor: float = 1.0):
    with torch.no_grad():
        for p, d in zip(module.params, direction):
            p.add_(d, alpha=factor)


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual", "layer_norm", "custom", "ntkit_network", "transformer"])
def test_linearized_model_is_f0_plus_j_delta(name):
    model, x1, _ = build(name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lin = linearize(model)
    with torch.no_grad():
        f0 = model(x1)
        # the tangent is exactly zero at theta0 (attention runs as plain ops here: round-off)
        assert relative_error(lin(x1), f0) <= EXACT
        direction = _direction(lin, 0.3)
        _move(lin, direction)
        jacobian = full_jacobian(model, x1)  # (N, *S, P), parameters in model.parameters() order
        expected = f0 + jacobian @ torch.cat([d.reshape(-1) for d in direction])
        assert relative_error(lin(x1) - f0, expected - f0) <= EXACT
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # untouched


@pytest.mark.parametrize("name", ["mlp", "layer_norm", "custom", "transformer"])
def test_gradients_of_the_linearized_model_are_j_transpose(name):
    """Training differentiates through the forward-mode JVP: d<v, f_lin>/d theta = J^T v."""
    model, x1, _ = build(name)
    lin = linearize(model)
    _move(lin, _direction(lin, 0.2))
    out = lin(x1)
    v = torch.cos(torch.arange(out.numel(), dtype=out.dtype)).reshape(out.shape)
    (out * v).sum().backward()
    got = torch.cat([p.grad.reshape(-1) for p in lin.params])
    jacobian = full_jacobian(model, x1).reshape(-1, got.numel())
    assert relative_error(got, jacobian.T @ v.reshape(-1)) <= EXACT


def test_linearization_matches_central_finite_differences():
    """(f(theta0 + h d) - f(theta0 - h d)) / 2h = J d + O(h^2): with h = 1e-4 the truncation is
    ~h^2 |f'''| ~ 1e-8 and the round-off eps/h ~ 1e-12, so 1e-6 relative is a safe bound that a
    wrong Jacobian (an O(1) error) fails."""
    model, x1, _ = build("mlp")
    lin = linearize(model)
    direction = _direction(lin, 1.0)
    with torch.no_grad():
        f0 = lin(x1)
        _move(lin, direction)
        change = lin(x1) - f0
        shifted = []
        for sign in (1.0, -1.0):
            copy = build("mlp")[0]
            for p, d in zip(copy.parameters(), direction):
                p.add_(d, alpha=sign * 1e-4)
            shifted.append(copy(x1))
    assert relative_error(change, (shifted[0] - shifted[1]) / 2e-4) <= 1e-6


def test_gradient_descent_on_the_linearized_model_follows_the_closed_form():
    """Full-batch gradient descent on L = |f - y|^2 / (2 n) for `steps` steps is exactly
    f_t = y + (I - lr Theta / n)^t (f_0 - y) for a linear model (ntkit.predict, discrete=True)."""
    from ntkit.predict import gradient_descent_mse

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    x, x_test = torch.randn(6, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    y = torch.randn(6, 1, dtype=torch.float64)
    lin = linearize(model)
    with torch.no_grad():
        f0, f0_test = lin(x), lin(x_test)
    theta, theta_test = empirical_ntk(model, x), empirical_ntk(model, x_test, x)
    learning_rate, steps = 0.5, 40
    optimizer = torch.optim.SGD(lin.parameters(), lr=learning_rate)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (lin(x) - y).pow(2).sum() / (2 * y.numel())
        loss.backward()
        optimizer.step()
    predicted = gradient_descent_mse(theta, y, learning_rate=learning_rate, discrete=True)(
        t=steps, fx_train_0=f0, fx_test_0=f0_test, k_test_train=theta_test)
    with torch.no_grad():
        assert relative_error(lin(x), predicted.train) <= EXACT
        assert relative_error(lin(x_test), predicted.test) <= EXACT
        assert relative_error(lin(x), f0) > 1e-2  # it did move


def test_gradient_flow_of_several_outputs_matches_the_matrix_exponential():
    """Many small steps approximate gradient flow df/dt = -Theta (f - y) / n on the full
    (N O x N O) NTK, solved by a matrix exponential. Euler's global error for an eigenvalue
    lam is |(1 - h lam)^(t/h) - exp(-lam t)| <= h lam^2 t exp(-lam t) / 2 * (1 + O(h lam))
    <= 2 h / (t e^2) * 1.1, relative to |f_0 - y|; the test allows twice that."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 12), nn.GELU(), nn.Linear(12, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    n = y.numel()
    full = empirical_ntk(model, x, trace_axes=())  # (N, N, O, O)
    theta = full.permute(0, 2, 1, 3).reshape(n, n) / n
    lin = linearize(model)
    with torch.no_grad():
        residual0 = (lin(x) - y).reshape(-1)
    t, h = 2.0, 2e-3
    step = h / float(torch.linalg.eigvalsh(theta).max())  # time unit: lr = step, lam_max * step = h
    optimizer = torch.optim.SGD(lin.parameters(), lr=step)
    for _ in range(round(t / h)):
        optimizer.zero_grad()
        ((lin(x) - y).pow(2).sum() / (2 * n)).backward()
        optimizer.step()
    exact = torch.linalg.matrix_exp(-theta * step * round(t / h)) @ residual0
    with torch.no_grad():
        error = float((lin(x) - y).reshape(-1).sub(exact).norm() / residual0.norm())
    bound = 2 * (2 * h / (t * math.e**2) * 1.1)
    assert error <= bound
    assert float((exact - residual0).norm() / residual0.norm()) > 10 * bound  # training did happen


def test_linearize_a_parameter_subset():
    model, x1, _ = build("mlp")
    lin = linearize(model, params=model[-1])
    assert lin.names == ["4.weight", "4.bias"]
    assert sum(p.requires_grad for p in lin.parameters()) == 2
    with torch.no_grad():
        _move(lin, _direction(lin, 0.5))
        hidden = model[:-1](x1)
        # linear in the readout's parameters: the linearization is the model itself there
        assert relative_error(lin(x1), nn.functional.linear(hidden, lin.params[0], lin.params[1])) <= EXACT


def test_linearize_an_ntkit_network_and_train_it():
    net = nk.serial(nk.Dense(32, 1.5, 0.1), nk.ReLU(), nk.Dense(1, 1.5, 0.1)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(nk.NtkitError, match="uninitialized"):
        linearize(net)
    net(x)
    lin = linearize(net)
    optimizer = torch.optim.Adam(lin.parameters(), lr=0.01)
    before = float(lin(x).pow(2).sum().detach())
    for _ in range(5):
        optimizer.zero_grad()
        lin(x).pow(2).sum().backward()
        optimizer.step()
    assert float(lin(x).pow(2).sum().detach()) < before
    assert all(p.grad is None for p in lin.model.parameters())


class Product(nn.Module):
    """f = W3 W2 W1 x: a polynomial of degree 3 in the parameters."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False))

    def forward(self, x):
        return self.layers(x)


def test_taylor_expansion_is_exact_for_polynomials_and_converges_at_its_order():
    torch.manual_seed(6)
    model = Product().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    moved = Product().double()
    expansions = {order: taylor_expand(model, order) for order in range(4)}
    direction = _direction(expansions[1], 0.5)
    with torch.no_grad():
        for order, expansion in expansions.items():
            assert relative_error(expansion(x), model(x)) <= EXACT  # at theta0
            _move(expansion, direction)
        for p, q in zip(moved.parameters(), expansions[3].params):
            p.copy_(q)
        target = moved(x)
        assert relative_error(expansions[3](x), target) <= EXACT  # degree 3: order 3 is exact
        assert relative_error(expansions[2](x), target) > 1e-3  # but order 2 is not
        lin = linearize(model)
        _move(lin, direction)
        assert relative_error(expansions[1](x), lin(x)) <= EXACT  # order 1 is the linearization


def test_taylor_remainder_shrinks_as_step_to_the_order_plus_one():
    """For a smooth (tanh) network the remainder after order k is O(s^(k+1)): halving the step
    divides it by 2^(k+1), up to the next order's share (a factor within [0.6, 1.6] here)."""
    model, x, _ = build("layer_norm")  # smooth: GELU and LayerNorm (ReLU's kinks would break this)

    def remainder(order: int, scale: float) -> float:
        expansion = taylor_expand(model, order)
        direction = _direction(expansion, scale)
        with torch.no_grad():
            _move(expansion, direction)
            moved = build("layer_norm")[0]
            for p, d in zip(moved.parameters(), direction):
                p.add_(d)
            return float((expansion(x) - moved(x)).abs().max())

    for order in (1, 2, 3):
        ratio = remainder(order, 0.01) / remainder(order, 0.005)
        assert 0.6 <= ratio / 2 ** (order + 1) <= 1.6, (order, ratio)


def test_taylor_order_must_be_a_non_negative_integer():
    model, _, _ = build("mlp")
    for order in (-1, 1.5, True):
        with pytest.raises(nk.NtkitError, match="order must be an integer"):
            taylor_expand(model, order)
    with pytest.raises(nk.NtkitError, match="no trainable parameters"):
        linearize(model.requires_grad_(False))


def _remainder_ratio(make_model, x, order: int, scale: float = 0.01) -> float:
    """Remainder of the order-k expansion at step ``scale`` over the one at half the step, divided
    by 2^(k+1): near 1 for a right expansion of a smooth model."""

    def remainder(step: float) -> float:
        expansion = taylor_expand(make_model(), order)
        direction = _direction(expansion, step)
        moved = make_model()
        with torch.no_grad():
            _move(expansion, direction)
            for p, d in zip(moved.parameters(), direction):
                p.add_(d)
            return float((expansion(x) - moved(x)).abs().max())

    return remainder(scale) / remainder(scale / 2) / 2 ** (order + 1)


@pytest.mark.parametrize("order", [1, 2])
def test_expansions_of_a_model_with_batchnorm_in_training_mode(order):
    """In training mode BatchNorm normalizes with the batch's statistics (its running statistics
    are left alone): the expansion is the model at theta0 and converges at its order."""

    def make_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()

    x = torch.randn(5, 3, dtype=torch.float64)
    expansion = taylor_expand(make_model(), order)
    with torch.no_grad():
        assert relative_error(expansion(x), make_model()(x)) <= EXACT
    assert torch.equal(expansion.model[1].running_mean, make_model()[1].running_mean)
    assert 0.6 <= _remainder_ratio(make_model, x, order) <= 1.6


@pytest.mark.parametrize("order", [2, 3])
def test_taylor_expansion_through_instance_norm(order):
    """InstanceNorm1d(C, affine=True) and GroupNorm(C, C) are the same function of the same
    parameters; their expansions must agree at any step (fused instance_norm's second
    forward-mode derivative is wrong, so it is written out)."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv1d(2, 4, 3), nn.InstanceNorm1d(4, affine=True), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2))
    b = nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(4, 4), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2))
    a, b = a.double(), b.double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 2, 5, dtype=torch.float64)
    expansions = [taylor_expand(m, order) for m in (a, b)]
    for expansion in expansions:
        _move(expansion, _direction(expansion, 0.1))
    with torch.no_grad():
        assert relative_error(expansions[0](x), expansions[1](x)) <= EXACT


@pytest.mark.parametrize("activation", [nn.SiLU, nn.Mish])
def test_second_order_expansion_through_silu_and_mish(activation):
    """Their fused kernels have no forward-mode derivative of the derivative; written out, the
    second-order expansion converges as s^3."""

    def make_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), activation(), nn.Linear(4, 2)).double()

    x = torch.randn(3, 3, dtype=torch.float64)
    assert 0.6 <= _remainder_ratio(make_model, x, 2) <= 1.6
