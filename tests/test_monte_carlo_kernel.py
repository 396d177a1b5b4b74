"""monte_carlo_kernel: agreement with the analytic kernel within its own standard error,
negative controls, and exactness of the vectorized computation against a plain loop."""

from __future__ import annotations

import math

import pytest
import torch

import ntkit as nk
from ntkit.empirical import empirical_nngp, empirical_ntk, monte_carlo_kernel
from ntkit.testing import critical_z, z_scores

from _empirical_reference import relative_error

WIDTH = 512
READOUT = 64  # channels averaged by the NNGP estimate; the NTK uses the first NTK_OUTPUTS
NTK_OUTPUTS = 8  # (its cost is proportional to the channels used)


def _inputs(n: int = 5, d: int = 4, seed: int = 0) -> torch.Tensor:
    """n examples, the last a copy of the first (correlation exactly 1)."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[-1] = x[0]
    return x


def _residual_block():
    block = nk.serial(nk.ReLU(), nk.Dense(WIDTH, 1.2, 0.1))
    return nk.serial(nk.FanOut(2), nk.parallel(block, nk.Identity()), nk.FanInSum())


# Hidden layers are wide (the finite-width bias is O(1/width) ~ 0.2%, far below the ~1-5%
# standard errors of 32 draws); the readout's width only sets how many channels are averaged.
NETWORKS = {
    "relu_erf": lambda: nk.serial(nk.Dense(WIDTH, 1.3, 0.2), nk.ReLU(), nk.Dense(WIDTH, 1.2, 0.1), nk.Erf(),
                                  nk.Dense(READOUT, 1.1, 0.1)),
    "residual": lambda: nk.serial(nk.Dense(WIDTH, 1.3, 0.2), _residual_block(), nk.ReLU(), nk.Dense(READOUT, 1.1, 0.1)),
    "layer_norm": lambda: nk.serial(nk.Dense(WIDTH, 1.3, 0.2), nk.LayerNorm(), nk.GELU(), nk.Dense(READOUT, 1.1, 0.1)),
    "dropout": lambda: nk.serial(nk.Dense(WIDTH, 1.3, 0.2), nk.ReLU(), nk.Dropout(0.3), nk.Dense(WIDTH, 1.2, 0.1),
                                 nk.Erf(), nk.Dense(READOUT, 1.1, 0.1)),
    "standard": lambda: nk.serial(nk.Dense(WIDTH, 1.3, 0.2, parameterization="standard"), nk.ReLU(),
                                  nk.Dense(READOUT, 1.1, 0.1, parameterization="standard")),
}


def _worst_z(estimate, cross: bool):
    """Largest |z| over the distinct entries (the upper triangle when the kernel is symmetric),
    with the Bonferroni threshold for that many entries at a 1e-4 false-alarm rate."""
    entries = []
    for mean, se, exact in estimate:
        z = z_scores(mean, se, exact)
        if not cross:
            rows, cols = torch.triu_indices(*z.shape)
            z = z[rows, cols]
        entries.append(z.reshape(-1))
    z = torch.cat(entries)
    return float(z.max()), critical_z(z.numel())


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_agrees_with_the_analytic_kernel_within_its_standard_error(name):
    net, x = NETWORKS[name](), _inputs()
    x2 = None if name != "relu_erf" else _inputs(3, seed=1)
    k = net.double().kernel(x, x2)
    mc = monte_carlo_kernel(net, x, x2, n_samples=32, seed=1, ntk_outputs=NTK_OUTPUTS)
    assert mc.n_samples == 32 and mc.nngp.shape == mc.ntk.shape == k.nngp.shape
    worst, threshold = _worst_z([(mc.nngp, mc.nngp_se, k.nngp), (mc.ntk, mc.ntk_se, k.ntk)], x2 is not None)
    assert worst <= threshold


@pytest.mark.parametrize("factor", [0.85, 1.15])
def test_negative_control_a_perturbed_kernel_is_rejected(factor):
    """With 32 draws the relative standard errors of the best-resolved entries are ~2-3% (per
    draw, a 64-channel NNGP average fluctuates by ~sqrt(2/64) = 18% relative; the NTK's by less),
    and the Bonferroni threshold is ~4.6 standard errors: a 15% error is beyond it."""
    net, x = NETWORKS["relu_erf"](), _inputs()
    k = net.double().kernel(x)
    mc = monte_carlo_kernel(net, x, n_samples=32, seed=2, ntk_outputs=NTK_OUTPUTS)
    worst, threshold = _worst_z([(mc.nngp, mc.nngp_se, k.nngp), (mc.ntk, mc.ntk_se, k.ntk)], False)
    assert worst <= threshold
    for field in ("nngp", "ntk"):
        mean, se = getattr(mc, field), getattr(mc, f"{field}_se")
        wrong, _ = _worst_z([(mean, se, getattr(k, field) * factor)], False)
        assert wrong > threshold, field


def test_standard_errors_shrink_as_one_over_root_samples():
    """Quadrupling the draws halves the standard error. The sample standard deviation of S
    normal draws has relative spread 1/sqrt(2(S-1)) (~13% for S=32, 6% for S=128); the median
    over the 15 distinct entries of the ratio of two independent estimates lies in [1.6, 2.5]."""
    net, x = NETWORKS["relu_erf"](), _inputs()
    few = monte_carlo_kernel(net, x, n_samples=32, seed=3, get="ntk", ntk_outputs=2)
    many = monte_carlo_kernel(net, x, n_samples=128, seed=4, get="ntk", ntk_outputs=2)
    rows, cols = torch.triu_indices(5, 5)
    ratio = (few.ntk_se / many.ntk_se)[rows, cols].median()
    assert 1.6 <= float(ratio) <= 2.5
    assert few.nngp is None and few.nngp_se is None


def test_equals_a_plain_loop_over_the_same_draws():
    """The vectorized estimate is the mean and standard error of the per-network empirical
    kernels (ntkit.empirical_ntk / empirical_nngp on each draw), exactly up to round-off."""
    net, x, x2 = NETWORKS["residual"]().double(), _inputs(), _inputs(3, seed=5)
    mc = monte_carlo_kernel(net, x, x2, n_samples=3, seed=7, batch_size=2, ntk_outputs=NTK_OUTPUTS)
    net(x)  # materialize, then draw as monte_carlo_kernel does: same seed, same module order
    nngps, ntks = [], []
    with torch.random.fork_rng():
        torch.manual_seed(7)  # the networks' stream (dropout masks have their own)
        for _ in range(3):
            for module in net.modules():
                if any(True for _ in module.parameters(recurse=False)):
                    module.reset_parameters()
            nngps.append(empirical_nngp(net, x, x2, trace_axes=(1,)))
            ntks.append(empirical_ntk(lambda_first(net), x, x2, implementation="jacobian_contraction"))
    for (mean, se), samples in (((mc.nngp, mc.nngp_se), nngps), ((mc.ntk, mc.ntk_se), ntks)):
        samples = torch.stack(samples)
        assert relative_error(mean, samples.mean(0)) <= 1e-12
        assert relative_error(se, samples.std(0) / math.sqrt(3)) <= 1e-10


def test_batches_of_copies_and_the_seed():
    net, x = NETWORKS["residual"](), _inputs()
    state = torch.get_rng_state()
    one = monte_carlo_kernel(net, x, n_samples=6, seed=11, batch_size=1, ntk_outputs=2)
    all_at_once = monte_carlo_kernel(net, x, n_samples=6, seed=11, ntk_outputs=2)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    for a, b in zip(one[:4], all_at_once[:4]):
        assert relative_error(a, b) <= 1e-12
    other_seed = monte_carlo_kernel(net, x, n_samples=6, seed=12, ntk_outputs=2)
    assert relative_error(other_seed.ntk, one.ntk) > 1e-3
    assert torch.equal(one.nngp, one.nngp.T)


def test_dropout_masks_are_drawn_per_network_and_example():
    """Same draws, dropout off (eval) vs on: the masks change the estimate, and with x2 = None
    an example shares its mask with itself, so the diagonal keeps the 1/(1-p) factor of the
    analytic kernel (checked in the agreement test) while the copy x[-1] = x[0] does not."""
    net, x = NETWORKS["dropout"](), _inputs()
    on = monte_carlo_kernel(net, x, n_samples=8, seed=3, ntk_outputs=2)
    off = monte_carlo_kernel(net.eval(), x, n_samples=8, seed=3, ntk_outputs=2)
    assert relative_error(on.ntk, off.ntk) > 1e-2
    assert float(on.nngp[0, 0]) != float(on.nngp[0, -1])
    assert relative_error(off.nngp[0, 0], off.nngp[0, -1]) <= 1e-12


def test_float32():
    net, x = NETWORKS["relu_erf"](), _inputs()
    single = monte_carlo_kernel(net, x, n_samples=4, seed=13, dtype=torch.float32, ntk_outputs=2)
    double = monte_carlo_kernel(net, x, n_samples=4, seed=13, ntk_outputs=2)
    assert single.ntk.dtype == torch.float32
    # the same networks (drawn in float64, rounded to float32), so only round-off: ~1e3 ulps
    assert relative_error(single.ntk, double.ntk) <= 1e3 * torch.finfo(torch.float32).eps


BAD = [
    ("n_samples must be an integer >= 2", dict(n_samples=1)),
    ("get must name", dict(get="cov")),
    ("ntk_outputs must be a positive integer", dict(ntk_outputs=0)),
    ("dtype must be", dict(dtype=torch.int64)),
    ("smaller than the", dict(memory_budget=1000)),
    ("batch_size", dict(batch_size=0)),
]


@pytest.mark.parametrize("message, options", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_named(message, options):
    with pytest.raises(nk.NtkitError, match=message):
        monte_carlo_kernel(NETWORKS["relu_erf"](), _inputs(), **options)


def test_bad_networks_and_inputs():
    x = _inputs()
    with pytest.raises(nk.NtkitError, match="different example shapes"):
        monte_carlo_kernel(NETWORKS["relu_erf"](), x, torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(nk.NtkitError, match="contains NaN"):
        monte_carlo_kernel(NETWORKS["relu_erf"](), x * float("nan"))
    with pytest.raises(nk.NtkitError, match="no reset_parameters"):
        monte_carlo_kernel(torch.nn.Sequential(_NoReset()), x)
    with pytest.raises(nk.NtkitError, match="no parameters"):
        monte_carlo_kernel(nk.serial(nk.ReLU()), x)


class _FirstChannels(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[:, :NTK_OUTPUTS]


def lambda_first(net):
    """The network's first NTK_OUTPUTS channels, the ones monte_carlo_kernel's NTK averages."""
    return _FirstChannels(net)


class _NoReset(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4, 2))

    def forward(self, x):
        return x @ self.weight
