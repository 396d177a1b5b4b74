"""empirical_ntk / empirical_nngp against brute-force full Jacobians (plain autograd, loops).

Tolerance: every kernel entry is a sum of at most a few hundred products of float64 numbers
that went through a handful of layers, so each implementation is exact to a few hundred ulps
(~1e-13 relative to the largest entry); the issue's 1e-10 leaves ample room and still fails
for any wrong term (a missing bias, a wrong scale, a missing cross term are O(1e-2..1)).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.empirical import IMPLEMENTATIONS, empirical_nngp, empirical_ntk, empirical_ntk_fn

from _empirical_models import MODELS, build
from _empirical_reference import apply_axes, full_ntk, relative_error

EXACT = 1e-10
ALL = sorted(IMPLEMENTATIONS) + ["auto"]


@functools.lru_cache(maxsize=None)
def reference(name: str):
    model, x1, x2 = build(name)
    return full_ntk(model, x1, x2), full_ntk(model, x1)


@pytest.mark.parametrize("implementation", ALL)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_brute_force_jacobians(name, implementation):
    model, x1, x2 = build(name)
    cross, same = reference(name)
    traced = empirical_ntk(model, x1, x2, implementation=implementation)
    assert relative_error(traced, apply_axes(cross, (-1,), ())) <= EXACT
    untraced = empirical_ntk(model, x1, implementation=implementation, trace_axes=())
    assert relative_error(untraced, apply_axes(same, (), ())) <= EXACT


def _spatial_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 2, 2, stride=(1, 2))).double()
    x1 = torch.randn(3, 2, 4, 6, dtype=torch.float64)
    x2 = torch.randn(3, 2, 4, 6, dtype=torch.float64)
    return model, x1, x2  # outputs (N, 2, 3, 3)


AXES = [((-1,), ()), ((), ()), ((1,), (3,)), ((1, 3), (2,)), ((2,), (0,)), ((), (0, 1)), ((1, 2, 3), (0,)), ((3,), (1, 2))]


@pytest.mark.parametrize("trace_axes, diagonal_axes", AXES, ids=str)
@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_trace_and_diagonal_axes_follow_neural_tangents(implementation, trace_axes, diagonal_axes):
    """Layouts and means over traced axes, against index loops over the full kernel."""
    model, x1, x2 = _spatial_model()
    full = full_ntk(model, x1, x2)
    got = empirical_ntk(model, x1, x2, implementation=implementation, trace_axes=trace_axes,
                        diagonal_axes=diagonal_axes, batch_size=2)
    assert relative_error(got, apply_axes(full, trace_axes, diagonal_axes)) <= EXACT


def test_same_inputs_are_exactly_symmetric_and_equal_to_a_copy():
    model, x1, _ = build("cnn")
    k = empirical_ntk(model, x1, batch_size=3)  # blocks across the diagonal
    assert torch.equal(k, k.T)
    untraced = empirical_ntk(model, x1, trace_axes=())
    assert torch.equal(untraced, untraced.permute(1, 0, 3, 2))
    assert relative_error(empirical_ntk(model, x1, x1.clone()), k) <= EXACT


@pytest.mark.parametrize("implementation", ALL)
def test_chunks_and_memory_budget_do_not_change_the_kernel(implementation):
    model, x1, x2 = build("residual")
    whole = empirical_ntk(model, x1, x2, implementation=implementation)
    for options in (dict(batch_size=1), dict(batch_size=3, progress=True), dict(memory_budget=2e5)):
        assert relative_error(empirical_ntk(model, x1, x2, implementation=implementation, **options), whole) <= EXACT


@pytest.mark.parametrize("name", ["cnn", "conv_residual_batchnorm"])
def test_chunks_of_one_batch_are_each_analysed_once(name, monkeypatch):
    """With x2 = x1 and features that fit, every chunk's features are computed once (the row of
    a chunk reuses its features from the column cache), and the kernel does not change."""
    from ntkit.empirical._structured import Structured

    model, x1, _ = build(name)
    x = torch.cat([x1, x1.flip(0) + 0.5])  # 8 examples
    whole = empirical_ntk(model, x, implementation="structured")
    calls = []
    features = Structured.features
    monkeypatch.setattr(Structured, "features", lambda self, p, x: calls.append(len(x)) or features(self, p, x))
    chunked = empirical_ntk(model, x, implementation="structured", batch_size=3)
    assert calls == [3, 3, 2]
    assert relative_error(chunked, whole) <= EXACT
    assert torch.equal(chunked, chunked.T)


@pytest.mark.parametrize("name", ["wide_conv", "conv_residual_batchnorm", "time_major", "tied_in_list"])
def test_features_computed_in_passes_are_the_chunks_features(name, monkeypatch):
    """On the CPU a chunk's features are computed in passes under PASS_BYTES_CPU; in passes of
    one example (no minimum of rows), through kept Jacobians, Gram-path inputs and cotangents,
    fallback Jacobians, the batched and the per-example path, the kernel is the one of whole
    chunks."""
    from ntkit.empirical import _structured

    model, x1, x2 = build(name)
    passes = []
    batched, per_example = _structured.Structured._features_batched, _structured.Structured._features_per_example
    monkeypatch.setattr(_structured, "PASS_BYTES_CPU", 1)
    monkeypatch.setattr(_structured, "MIN_ROWS_PER_PASS", 1)
    monkeypatch.setattr(_structured.Structured, "_features_batched",
                        lambda self, p, x: passes.append(len(x)) or batched(self, p, x))
    monkeypatch.setattr(_structured.Structured, "_features_per_example",
                        lambda self, p, x: passes.append(len(x)) or per_example(self, p, x))
    got = empirical_ntk(model, x1, x2, implementation="structured", trace_axes=())
    assert passes == [1] * (len(x1) + len(x2))
    assert relative_error(got, apply_axes(reference(name)[0], (), ())) <= EXACT


@pytest.mark.parametrize("budget, batch_size, path", [(1e9, None, "kept"), (5e4, 1, "gram"), (5e4, 4, "explicit")])
def test_a_large_jacobian_is_kept_only_within_the_budget(budget, batch_size, path, monkeypatch):
    """wide_conv's second convolution has a Jacobian larger than its inputs and cotangents: with
    room in the budget its Jacobian is kept in the features, else each block takes the Gram or
    the explicit path (the Gram path's memory grows with the block). Every way gives the kernel."""
    from ntkit.empirical._problem import Problem
    from ntkit.empirical._structured import Structured

    model, x1, x2 = build("wide_conv")
    problem = Problem(model, x1, x2, trace_axes=())
    assert (1 in Structured(problem, problem.structure, budget)._kept) == (path == "kept")
    grams = []
    gram = Structured._gram
    monkeypatch.setattr(Structured, "_gram", staticmethod(lambda *a: grams.append(1) or gram(*a)))
    got = empirical_ntk(model, x1, x2, implementation="structured", trace_axes=(), memory_budget=budget,
                        batch_size=batch_size)
    assert relative_error(got, apply_axes(reference("wide_conv")[0], (), ())) <= EXACT
    assert bool(grams) == (path == "gram")


def test_parameter_subsets():
    model, x1, x2 = build("mlp")
    readout = model[-1]
    expected = apply_axes(full_ntk(model, x1, x2, params=list(readout.parameters())), (-1,), ())
    for params in (readout, ["4.weight", "4.bias"], [readout.weight, readout.bias]):
        for implementation in ALL:
            got = empirical_ntk(model, x1, x2, params=params, implementation=implementation)
            assert relative_error(got, expected) <= EXACT
    # Closed form for the readout alone: d f_o / d W_o = a, d f_o / d b_o = 1, so Theta = a1.a2 + 1
    with torch.no_grad():
        a1, a2 = model[:-1](x1), model[:-1](x2)
    assert relative_error(empirical_ntk(model, x1, x2, params=readout), a1 @ a2.T + 1) <= EXACT
    weight_only = empirical_ntk(model, x1, x2, params="4.weight", implementation="structured")
    assert relative_error(weight_only, a1 @ a2.T) <= EXACT


def test_readout_ntk_of_an_ntkit_network_is_its_scaled_nngp():
    """For Dense(W_std, b_std) in the NTK parameterization, Theta_readout = W_std^2 K_in + b_std^2,
    with K_in the empirical NNGP of the readout's inputs (a . a' / n): Dense's scaling, through
    the structured rule, against empirical_nngp with ``layer=``."""
    torch.manual_seed(2)
    net = nk.serial(nk.Dense(64, 1.4, 0.3), nk.Erf(), nk.Dense(5, W_std=1.7, b_std=0.4)).double()
    x1, x2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    net(x1)
    k_in = empirical_nngp(net, x1, x2, layer=net[1])
    theta = empirical_ntk(net, x1, x2, params=net[2])
    assert relative_error(theta, 1.7**2 * k_in + 0.4**2) <= EXACT
    theta_jc = empirical_ntk(net, x1, x2, params=net[2], implementation="jacobian_contraction")
    assert relative_error(theta_jc, theta) <= EXACT


@pytest.mark.parametrize("trace_axes, diagonal_axes", [((-1,), ()), ((1,), (3,)), ((), (0,))], ids=str)
def test_nngp_is_the_traced_outer_product_of_outputs(trace_axes, diagonal_axes):
    model, x1, x2 = _spatial_model()
    with torch.no_grad():
        y1, y2 = model(x1), model(x2)
    full = torch.tensordot(y1, y2, dims=0)  # (N1, *S, N2, *S)
    got = empirical_nngp(model, x1, x2, trace_axes=trace_axes, diagonal_axes=diagonal_axes, batch_size=2)
    assert relative_error(got, apply_axes(full, trace_axes, diagonal_axes)) <= EXACT


def test_nngp_of_a_named_layer():
    model, x1, x2 = build("mlp")
    with torch.no_grad():
        h1, h2 = model[:3](x1), model[:3](x2)
    assert relative_error(empirical_nngp(model, x1, x2, layer="2"), h1 @ h2.T / h1.shape[1]) <= EXACT


def test_float32_agrees_with_float64():
    """float32 entries are sums of ~500 products after a few layers: ~1e3 float32 ulps (1e-4)."""
    model, x1, x2 = build("cnn")
    single, reference64 = build("cnn", dtype=torch.float32)[0], empirical_ntk(model, x1, x2)
    for implementation in ALL:
        k = empirical_ntk(single, x1.float(), x2.float(), implementation=implementation)
        assert k.dtype == torch.float32
        assert relative_error(k, reference64) <= 1e3 * torch.finfo(torch.float32).eps


def test_batchnorm_in_training_mode_uses_the_batch_and_keeps_the_model_untouched():
    """A model that mixes examples: structured refuses, the others differentiate the whole batch."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double().train()
    x = torch.randn(6, 3, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = apply_axes(full_ntk(model, x), (-1,), ())
    model.load_state_dict(state)  # the reference's forward pass updated the running statistics
    for implementation in ("auto", "jacobian_contraction", "ntk_vector_products"):
        assert relative_error(empirical_ntk(model, x, implementation=implementation), expected) <= EXACT
    with pytest.raises(nk.NtkitError, match="structured.*BatchNorm1d"):
        empirical_ntk(model, x, implementation="structured")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_auto_prefers_structured_for_linear_and_convolutional_networks():
    from ntkit.empirical._problem import Problem
    from ntkit.empirical._registry import make_implementation

    for name in ("mlp", "cnn", "ntkit_network"):
        model, x1, x2 = build(name)
        problem = Problem(model, x1, x2)
        assert make_implementation("auto", problem, problem.structure, 1e9).name == "structured"


def test_a_parameter_read_inside_a_list_falls_back_to_autodiff():
    from ntkit.empirical._problem import Problem

    model, x1, x2 = build("tied_in_list")
    assert Problem(model, x1, x2).structure.fallback == ["inner.weight", "inner.bias"]  # the whole layer


@pytest.mark.parametrize("name", ["normalizations", "conv_residual_batchnorm", "layer_norm"])
def test_normalization_layers_are_structured(name):
    """BatchNorm (eval), GroupNorm and LayerNorm parameters go through their rules, not autodiff,
    so these models take the batched path (their kernels are checked against brute force above)."""
    from ntkit.empirical._problem import Problem
    from ntkit.empirical._structured import _batched_path

    model, x1, x2 = build(name)
    problem = Problem(model, x1, x2)
    assert problem.structure.fallback == []
    assert _batched_path(problem.structure)


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual", "ntkit_network", "time_major", "normalizations"])
def test_structured_per_example_and_batched_paths_agree(name):
    """The batched autograd path (no fallback parameters, example axis leading everywhere) and
    the per-example torch.func path (used under vmap by monte_carlo_kernel) give one kernel."""
    from ntkit.empirical._problem import Problem
    from ntkit.empirical._structured import Structured, _batched_path

    model, x1, x2 = build(name)
    problem = Problem(model, x1, x2, trace_axes=())
    assert _batched_path(problem.structure) == (name != "time_major")  # time_major: not leading
    paths = []
    for functional in (False, True):
        implementation = Structured(problem, problem.structure, 1e9)
        implementation.functional = functional
        with torch.no_grad():
            f1, f2 = implementation.features(problem.params, x1), implementation.features(problem.params, x2)
            paths.append(problem.axes.layout(implementation.contract(f1, f2)))
    assert relative_error(paths[0], paths[1]) <= EXACT
    assert relative_error(paths[1], apply_axes(reference(name)[0], (), ())) <= EXACT


def test_ntk_fn_reuses_its_analysis_and_follows_parameter_values():
    model, x1, x2 = build("cnn")
    ntk_fn = empirical_ntk_fn(model)
    first = ntk_fn(x1, x2)
    assert relative_error(first, empirical_ntk(model, x1, x2)) <= EXACT
    assert len(ntk_fn._analyses) == 1
    with torch.no_grad():  # a training step changes values, not the structure
        for p in model.parameters():
            p.mul_(1.1)
    moved = ntk_fn(x1, x2)
    assert len(ntk_fn._analyses) == 1 and relative_error(moved, first) > 1e-2
    assert relative_error(moved, empirical_ntk(model, x1, x2)) <= EXACT
    ntk_fn(x1)  # x2=None, and a mode change: new analyses
    model.eval()
    ntk_fn(x1, x2)
    assert len(ntk_fn._analyses) == 3
    assert relative_error(ntk_fn(x2[:2], x1[1:]), empirical_ntk(model, x2[:2], x1[1:])) <= EXACT
    first_layer = next(model.parameters())
    first_layer.requires_grad_(False)  # frozen: no longer differentiated
    frozen = ntk_fn(x1, x2)
    assert relative_error(frozen, empirical_ntk(model, x1, x2)) <= EXACT
    assert relative_error(frozen, moved) > 1e-3


def test_on_device(device):
    model, x1, x2 = build("cnn")
    expected = empirical_ntk(model, x1, x2)
    got = empirical_ntk(model.to(device), x1.to(device), x2.to(device))
    assert got.device.type == device.type
    assert relative_error(got.cpu(), expected) <= EXACT


# -- bad input -------------------------------------------------------------------------------


class TupleOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x), x


BAD = [
    ("no trainable parameters", lambda m, x: empirical_ntk(m.requires_grad_(False), x)),
    ("does not fit the model's output of shape", lambda m, x: empirical_ntk(m, x, trace_axes=(2,))),
    ("batch axis 0, which cannot be traced", lambda m, x: empirical_ntk(m, x, trace_axes=(0,))),
    ("in both trace_axes", lambda m, x: empirical_ntk(m, x, trace_axes=(1,), diagonal_axes=(-1,))),
    ("different example shapes", lambda m, x: empirical_ntk(m, x, torch.randn(2, 4, dtype=x.dtype))),
    ("x1 contains NaN or inf", lambda m, x: empirical_ntk(m, torch.where(x > 1, float("nan"), x))),
    ("x2 contains NaN or inf", lambda m, x: empirical_ntk(m, x, x.clone().fill_(float("inf")))),
    ("smaller than the", lambda m, x: empirical_ntk(m, x, memory_budget=100)),
    ("implementation must be", lambda m, x: empirical_ntk(m, x, implementation="fast")),
    ("no parameter named 'weight'", lambda m, x: empirical_ntk(m, x, params="weight")),
    ("batch_size must be a positive integer", lambda m, x: empirical_ntk(m, x, batch_size=0)),
    ("memory_budget must be a positive number", lambda m, x: empirical_ntk(m, x, memory_budget=-1)),
    ("must be a torch.Tensor", lambda m, x: empirical_ntk(m, x.tolist())),
    ("as many examples in x2", lambda m, x: empirical_ntk(m, x, x[:2], diagonal_axes=(0,))),
    ("must be a torch.nn.Module", lambda m, x: empirical_ntk(lambda y: y, x)),
    ("returned tuple", lambda m, x: empirical_ntk(TupleOutput().double(), x)),
    ("differ between two calls", lambda m, x: empirical_ntk(nn.Sequential(m, nn.Dropout(0.5)), x)),
    ("layer: model has no submodule", lambda m, x: empirical_nngp(m, x, layer="head")),
    ("does not fit", lambda m, x: empirical_nngp(m, x, trace_axes=(5,))),
    ("smaller than the", lambda m, x: empirical_nngp(  # the hidden layer's 4096 activations count
        nn.Sequential(nn.Linear(3, 4096), nn.Tanh(), nn.Linear(4096, 2)).double(), x, memory_budget=3e4)),
    ("an int or a tuple of ints, got '1'", lambda m, x: empirical_ntk(m, x, trace_axes="1")),
    (r"an int or a tuple of ints, got \(1.5,\)", lambda m, x: empirical_ntk(m, x, trace_axes=(1.5,))),
    (r"output \(N,\) has no other axis to trace; pass trace_axes=\(\)",
     lambda m, x: empirical_ntk(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)).double(), x)),
    ("treats examples independently: 1 \\(BatchNorm1d\\)",
     lambda m, x: nk.monte_carlo_kernel(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), x)),
]


@pytest.mark.parametrize("message, call", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_named(message, call):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64) * 2
    with pytest.raises(nk.NtkitError, match=message):
        call(model, x)


def test_a_lazy_model_is_materialized_by_its_first_call():
    """A fresh ntkit network (lazy input size) gets its parameters from one forward pass on x1,
    as its first call would; its kernel is then that of those parameters."""
    x = torch.randn(4, 3, dtype=torch.float64)
    net = nk.serial(nk.Dense(16, 1.5, 0.1), nk.ReLU(), nk.Dense(2, 1.5, 0.1))
    first = empirical_ntk(net, x)
    assert net[0].weight.shape == (16, 3) and net[0].weight.dtype == torch.float64
    reference = apply_axes(full_ntk(net, x, x), trace_axes=(-1,), diagonal_axes=())
    assert relative_error(first, reference) < 1e-12
    features = empirical_nngp(nn.Sequential(nn.LazyLinear(2, dtype=torch.float64)), x)
    assert features.shape == (4, 4)
