"""The layer contract (ntkit.testing.check_layer) on every layer of the zoo."""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from ntkit.testing import check_layer, check_monte_carlo

from zoo import DEEP, ZOO, inputs


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_zoo_contract_with_monte_carlo(entry, device):
    check_layer(entry.build(), inputs(), wrap=False, accuracy=entry.accuracy, device=device)


@pytest.mark.slow
@pytest.mark.parametrize("entry", DEEP, ids=lambda e: e.name)
def test_deep_networks_contract(entry):
    check_layer(entry.build(), inputs(), wrap=False, monte_carlo=False, accuracy=entry.accuracy)


@pytest.mark.slow
def test_depth_20_monte_carlo():
    check_layer(DEEP[1].build(), inputs(), wrap=False, n_samples=16)


def test_check_layer_wraps_a_single_layer():
    check_layer(nk.GELU(), n_samples=16)


@pytest.mark.parametrize("factor", [0.85, 1.15])
@pytest.mark.parametrize("name", ["ReLU", "Erf", "Residual"])
def test_monte_carlo_rejects_a_perturbed_kernel(name, factor):
    """Negative control: the same check fails when the kernel is off by 15%.

    With 32 draws the relative standard error of the best-resolved entries is ~2-3% (the
    hidden layers' empirical kernel fluctuates as 1/sqrt(width) per draw), and the Bonferroni
    threshold is ~4.7 standard errors: a 15% error is beyond it, a 5% one need not be.
    """
    entry = next(e for e in ZOO if e.name == name)
    net = entry.build().double()
    x = inputs()
    k = net.kernel(x)
    check_monte_carlo(net, x, k)  # the check passes on the true kernel
    for wrong in (k.replace(nngp=k.nngp * factor), k.replace(ntk=k.ntk * factor)):
        with pytest.raises(AssertionError, match="disagrees"):
            check_monte_carlo(net, x, wrong)


def test_monte_carlo_rejects_a_plausible_bug():
    """Negative control: a ReLU kernel computed as if the weights were 5% larger fails."""
    x = inputs()
    net = nk.serial(nk.Dense(512, 1.3, 0.2), nk.ReLU(), nk.Dense(512, 1.1, 0.1)).double()
    wrong = nk.serial(nk.Dense(512, 1.3 * 1.05, 0.2), nk.ReLU(), nk.Dense(512, 1.1, 0.1)).kernel(x)
    with pytest.raises(AssertionError, match="disagrees"):
        check_monte_carlo(net, x, wrong)


def test_check_layer_catches_a_wrong_kernel_map():
    """A user layer whose kernel map forgets the derivative term fails the contract."""

    class ForgetfulReLU(nk.ReLU):
        def dual(self, pair, derivative):
            nngp, _ = super().dual(pair, derivative)
            return nngp, torch.ones_like(nngp)

    with pytest.raises(AssertionError, match="disagrees"):
        check_layer(ForgetfulReLU(), n_samples=16)
