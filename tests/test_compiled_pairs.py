"""The compiled pair recursions (``finite_width._compiled_pairs``) against the torch ones.

Both evaluate the same closed forms in nearly the same order, so they agree to round-off:
1e-12 of the largest entry of each statistic, on pairs whose correlations stay away from the
band where the K-Hessians of the kernel blow up. Pairs of distinct samples with
1 - |rho| ~ 1e-6 (just inside the clamp at 1e-7) are ill-conditioned in either implementation
(``sum_uv H_uv V_uv`` cancels terms ~1/sin(theta)^3 against a nearly rank-one V): there the
compiled loop is compared with the torch path's own spread under half-ulp perturbations.
"""

import math

import pytest
import torch

import ntkit as nk
from ntkit import _compiled
from ntkit.finite_width import MLPSpec, corrections, read_mlp
from ntkit.finite_width import _recursions
from ntkit.finite_width._recursions import propagate, torch_propagate

pytest.importorskip("numba")
from ntkit.finite_width import _compiled_pairs  # noqa: E402

ACTS = {
    "relu": nk.ReLU(), "leaky": nk.LeakyReLU(0.2), "abs": nk.Abs(),
    "abrelu": nk.ABReLU(-0.3, 1.2), "linear": nk.ABReLU(0.7, 0.7),
}


def random_spec(depth, seed, acts=tuple(ACTS.values())):
    """Depth ``depth`` with activations drawn from ``acts`` and coefficients drawn per layer."""
    g = torch.Generator().manual_seed(seed)
    chosen = tuple(acts[int(i)] for i in torch.randint(0, len(acts), (depth - 1,), generator=g))

    def draw(low, high):
        return tuple((low + (high - low) * torch.rand(depth, generator=g, dtype=torch.float64)).tolist())

    return MLPSpec(chosen, draw(0.5, 2.5), draw(0.0, 0.5), draw(0.1, 2.0), draw(0.0, 1.0))


def random_pairs(p, seed):
    """Input products of p pairs: variances in [0.2, 2], correlations in (-0.9, 0.9); then equal
    variances with |rho| = 1 - 1e-9 and 1 (distinct samples: the clamped branch, which the bias
    of the next layers keeps clamped), rho = 0, and identical samples (``same``)."""
    g = torch.Generator().manual_seed(seed)
    kaa = 0.2 + 1.8 * torch.rand(p, generator=g, dtype=torch.float64)
    kbb = 0.2 + 1.8 * torch.rand(p, generator=g, dtype=torch.float64)
    rho = 1.8 * torch.rand(p, generator=g, dtype=torch.float64) - 0.9
    rho[:5] = torch.tensor([1 - 1e-9, -1 + 1e-9, 1.0, -1.0, 0.0], dtype=torch.float64)
    kbb[:4] = kaa[:4]
    same = torch.zeros(p, dtype=torch.bool)
    same[-3:] = True
    kbb[same] = kaa[same]
    rho[same] = 1.0
    return torch.stack([kaa, rho * torch.sqrt(kaa * kbb), kbb], 1), same


def assert_round_off(fast, reference, tolerance=1e-12):
    assert set(fast) == set(reference)
    for name, ref in reference.items():
        assert fast[name].shape == ref.shape and fast[name].dtype == torch.float64, name
        scale = max(ref.abs().max().item(), 1e-300)
        error = (fast[name] - ref).abs().max().item()
        assert error <= tolerance * scale, f"{name}: {error:.3g} > {tolerance:.0e} * {scale:.3g}"


@pytest.mark.parametrize("name", list(ACTS))
@pytest.mark.parametrize("depth", [2, 4])
def test_each_activation_matches_torch(name, depth):
    s = MLPSpec((ACTS[name],) * (depth - 1), (1.5,) * depth, (0.2,) * depth, (0.8,) * depth, (0.3,) * depth)
    q, same = random_pairs(48, seed=depth)
    assert_round_off(_compiled_pairs.propagate(s, q, same), torch_propagate(s, q, same))


@pytest.mark.parametrize("depth", range(1, 7))
@pytest.mark.parametrize("seed", range(4))
def test_mixed_layers_match_torch(depth, seed):
    """Different slopes and C_W, C_b, lambda_W, lambda_b in every layer; depths 1 to 6."""
    s = random_spec(depth, seed=10 * depth + seed)
    q, same = random_pairs(64, seed=seed)
    assert_round_off(_compiled_pairs.propagate(s, q, same), torch_propagate(s, q, same))


def test_clamped_and_identical_pairs_alone():
    """Only the special branches: clamped correlations (both signs) and identical samples."""
    s = random_spec(5, seed=7, acts=(nk.ReLU(), nk.Abs(), nk.ABReLU(-0.3, 1.2)))
    q, same = random_pairs(8, seed=1)
    keep = torch.tensor([0, 1, 2, 3, 5, 6, 7])
    assert_round_off(_compiled_pairs.propagate(s, q[keep], same[keep]), torch_propagate(s, q[keep], same[keep]))


def test_propagate_dispatches_and_keeps_the_torch_fallback(monkeypatch):
    s = random_spec(4, seed=3)
    q, same = random_pairs(16, seed=2)
    calls = []
    real = _compiled_pairs.propagate
    monkeypatch.setattr(_compiled_pairs, "propagate", lambda *a: calls.append(1) or real(*a))
    assert_round_off(propagate(s, q, same), torch_propagate(s, q, same))
    assert calls == [1]
    monkeypatch.setattr(_compiled, "enabled", lambda *tensors: False)
    propagate(s, q, same)
    tanh = MLPSpec((nk.Tanh(),), (1.5, 1.5), (0.1, 0.1), (1.0, 1.0), (0.1, 0.1))
    propagate(tanh, q[:2], same[:2])
    assert calls == [1]  # disabled, or not the ReLU family: the torch path


def test_empty_batch():
    s = random_spec(3, seed=0)
    out = _compiled_pairs.propagate(s, torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.bool))
    assert out["F"].shape == (2, 2, 2, 2, 0) and out["V"].shape == (3, 3, 0)


def test_ill_conditioned_pairs_agree_within_the_torch_round_off(monkeypatch):
    """Distinct samples with rho = 1 and unequal variances: the bias moves them to 1 - rho ~ 1e-6,
    inside the clamp, where Theta^1 loses ~8 digits in both implementations. The compiled result
    is within 4x the spread of the torch path under half-ulp perturbations of its state."""
    s = random_spec(3, seed=20, acts=(nk.ABReLU(-0.3, 1.2),))
    q, same = random_pairs(16, seed=4)
    q[:, 1] = torch.sqrt(q[:, 0] * q[:, 2])  # rho = 1, kaa != kbb
    same[:] = False
    reference = torch_propagate(s, q, same)
    fast = _compiled_pairs.propagate(s, q, same)
    advance = _recursions._advance
    g = torch.Generator().manual_seed(0)

    def perturbed(*args):
        out = advance(*args)
        return {k: x * (1 + 1.1e-16 * torch.randn(x.shape, dtype=x.dtype, generator=g)) for k, x in out.items()}

    monkeypatch.setattr(_recursions, "_advance", perturbed)
    spread = {name: 0.0 for name in reference}
    for _ in range(3):
        noisy = torch_propagate(s, q, same)
        for name in spread:
            spread[name] = max(spread[name], (noisy[name] - reference[name]).abs().max().item())
    scale = reference["T1"].abs().max().item()
    assert spread["T1"] > 1e-10 * scale  # the premise: this case is ill-conditioned
    for name, ref in reference.items():
        error = (fast[name] - ref).abs().max().item()
        assert error <= 1e-12 * ref.abs().max().item() + 4 * spread[name], name


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_corrections_compiled_equal_torch(monkeypatch, parameterization):
    """``corrections`` on inputs with duplicates, near-duplicates and negated rows, two chunks."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    x[1] = x[0]
    x[2] = x[0] + 1e-9 * torch.randn(5, generator=g, dtype=torch.float64)
    x[3] = -x[0]
    layers = []
    for act in (nk.ReLU(), nk.LeakyReLU(0.1), nk.Abs(), nk.ReLU()):
        layers += [nk.Dense(16, 1.3, 0.2, parameterization=parameterization), act]
    net = nk.serial(*layers, nk.Dense(1, 1.3, 0.2, parameterization=parameterization))
    x2 = torch.cat([x[:4], torch.randn(26, 5, generator=g, dtype=torch.float64)])  # shares samples with x
    monkeypatch.setattr("ntkit.finite_width._corrections._CLOSED_PAIRS", 500)
    fast = corrections(net, x, x2)
    fast_sym = corrections(net, x)
    monkeypatch.setattr(_compiled, "enabled", lambda *tensors: False)
    slow = corrections(net, x, x2)
    slow_sym = corrections(net, x)
    for a, b in ((fast, slow), (fast_sym, slow_sym)):
        for name in a._fields:
            scale = getattr(b, name).abs().max().item()
            assert (getattr(a, name) - getattr(b, name)).abs().max().item() <= 1e-12 * scale, name
    assert fast_sym.ntk_correction.abs().max() > 0


def test_spec_with_no_hidden_layer():
    s = read_mlp(nk.serial(nk.Dense(1, 1.2, 0.3)), None, 3)
    q, same = random_pairs(6, seed=0)
    assert_round_off(_compiled_pairs.propagate(s, q, same), torch_propagate(s, q, same))
    assert math.isclose(_compiled_pairs.propagate(s, q, same)["K"][1, 5].item(), 0.09 + 1.44 * q[5, 1].item())
