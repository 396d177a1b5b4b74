"""empirical_ntk and empirical_ntk_fn on models found in the wild, against brute force.

Each case once gave a wrong kernel or a raw torch error: hooks, stale state in a reused
analysis, examples that mix or look alike, layers applied to tensors without an example axis,
models that do not run under vmap or forward-mode AD. The reference is
``_empirical_reference`` (plain autograd, loops), with the default ``trace_axes=(-1,)``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit
from ntkit.empirical import empirical_ntk, empirical_ntk_fn

from _empirical_reference import apply_axes, full_ntk, relative_error

D = torch.float64
EXACT = 1e-10  # see test_empirical


def reference_ntk(model, x1, x2=None, params=None):
    return apply_axes(full_ntk(model, x1, x2, params), (-1,), ())


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double(), torch.randn(4, 3, dtype=D)


class WithFallback(nn.Module):
    """A parameter used outside any Linear: structured takes its per-example path too."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 4))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) * self.scale)


# -- the public name --------------------------------------------------------------------------


def test_empirical_ntk_fn_is_exported_as_documented():
    """The docstrings of EmpiricalNtkFn and empirical_ntk_fn (its example) call it ``ntkit.empirical_ntk_fn``."""
    assert ntkit.empirical_ntk_fn is empirical_ntk_fn


# -- empirical_ntk_fn must follow the model it wraps ----------------------------------------------


@pytest.mark.parametrize("implementation", ["jacobian_contraction", "ntk_vector_products", "structured"])
def test_ntk_fn_follows_parameters_whose_data_is_rebound(implementation):
    torch.manual_seed(0)
    model, x = WithFallback().double(), torch.randn(4, 3, dtype=D)
    ntk_fn = empirical_ntk_fn(model, implementation=implementation)
    ntk_fn(x)
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data * 1.5  # same Parameter objects, new storage (old-style manual SGD)
    assert relative_error(ntk_fn(x), reference_ntk(model, x)) <= EXACT


def test_ntk_fn_follows_a_dtype_conversion_of_the_model():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)), torch.randn(4, 3, dtype=D)
    ntk_fn = empirical_ntk_fn(model)
    ntk_fn(x)
    model.double()  # Module._apply rebinds .data: the parameters keep their ids
    got = ntk_fn(x)
    assert got.dtype == torch.float64
    assert relative_error(got, reference_ntk(model, x)) <= EXACT


@pytest.mark.parametrize("implementation", ["jacobian_contraction", "ntk_vector_products"])
def test_ntk_fn_follows_reassigned_buffers(implementation):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double().eval()
    x = torch.randn(4, 3, dtype=D)
    ntk_fn = empirical_ntk_fn(model, implementation=implementation)
    ntk_fn(x)
    model[1].running_var = model[1].running_var * 4  # a new tensor under the buffer's name
    assert relative_error(ntk_fn(x), reference_ntk(model, x)) <= EXACT


def test_ntk_fn_follows_requires_grad():
    model, x = mlp()
    ntk_fn = empirical_ntk_fn(model)
    ntk_fn(x)
    model[0].requires_grad_(False)
    assert relative_error(ntk_fn(x), reference_ntk(model, x)) <= EXACT


def test_ntk_fn_accepts_a_generator_of_parameters():
    model, x = mlp()
    ntk_fn = empirical_ntk_fn(model, params=model[2].parameters())
    ntk_fn(x)
    assert relative_error(ntk_fn(x, x[:2]), reference_ntk(model, x, x[:2], list(model[2].parameters()))) <= EXACT


class Centered(nn.Module):
    """Mixes the examples of a batch (subtracts the batch mean), like BatchNorm in training."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.tanh(h - h.mean(0, keepdim=True)))


def test_ntk_fn_does_not_reuse_a_one_example_analysis_for_a_mixing_model():
    torch.manual_seed(0)
    model, x = Centered().double(), torch.randn(4, 3, dtype=D)
    ntk_fn = empirical_ntk_fn(model)
    ntk_fn(x[:1])  # the probe is then one example twice: no way to see the mixing
    assert relative_error(ntk_fn(x), reference_ntk(model, x)) <= EXACT


def test_a_mixing_model_is_detected_when_the_first_two_examples_are_equal():
    torch.manual_seed(0)
    model, x = Centered().double(), torch.randn(4, 3, dtype=D)
    x[1] = x[0]
    assert relative_error(empirical_ntk(model, x), reference_ntk(model, x)) <= EXACT


# -- structured -----------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["structured", "auto"])
def test_a_forward_hook_that_changes_a_layers_output(implementation):
    model, x = mlp()
    model[0].register_forward_hook(lambda module, args, out: 2 * out)
    assert relative_error(empirical_ntk(model, x, implementation=implementation), reference_ntk(model, x)) <= EXACT


class ConstantInput(nn.Module):
    """A Linear applied to a buffer (no example axis), e.g. a projected positional table."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.randn(1, 3))
        self.project, self.readout = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.readout(torch.tanh(x + self.project(self.table)))


@pytest.mark.parametrize("implementation", ["structured", "auto"])
def test_a_linear_applied_to_an_input_independent_tensor(implementation):
    torch.manual_seed(0)
    model, x = ConstantInput().double(), torch.randn(4, 3, dtype=D)
    assert relative_error(empirical_ntk(model, x, implementation=implementation), reference_ntk(model, x)) <= EXACT


# -- models that treat examples independently but do not run under vmap --------------------------


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn, self.readout = cell(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        return self.readout(self.rnn(x)[0][:, -1])


class Branch(nn.Module):
    """Python control flow on a tensor value (.item()): no vmap, but per example."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        h = torch.tanh(self.a(x)) * self.scale
        if float(h.detach().abs().max()) > 100:
            h = h * 0
        return self.b(h)


NO_VMAP = {
    "lstm": (lambda: Recurrent(nn.LSTM), (5, 3)),
    "gru": (lambda: Recurrent(nn.GRU), (5, 3)),
    "item": (Branch, (3,)),
}


@pytest.mark.parametrize("implementation", ["auto", "jacobian_contraction", "ntk_vector_products"])
@pytest.mark.parametrize("name", sorted(NO_VMAP))
def test_models_that_do_not_run_under_vmap(name, implementation):
    torch.manual_seed(0)
    build, shape = NO_VMAP[name]
    model, x = build().double(), torch.randn(3, *shape, dtype=D)
    got = empirical_ntk(model, x, x[:2], implementation=implementation)
    assert relative_error(got, reference_ntk(model, x, x[:2])) <= EXACT


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag, self.readout = nn.EmbeddingBag(20000, 16), nn.Linear(16, 2)

    def forward(self, tokens):
        return self.readout(torch.tanh(self.bag(tokens)))


def test_auto_does_not_pick_forward_mode_for_an_op_without_it():
    """EmbeddingBag has no forward-mode derivative; its many parameters make ntk_vector_products
    the cheapest by the cost model."""
    torch.manual_seed(0)
    model, tokens = Bag().double(), torch.randint(0, 20000, (4, 5))
    assert relative_error(empirical_ntk(model, tokens), reference_ntk(model, tokens)) <= EXACT
