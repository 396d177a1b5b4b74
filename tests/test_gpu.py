"""The GPU paths: every kernel, empirical kernel and prediction on a CUDA device agrees with the CPU.

Skipped where there is no CUDA device (CI); run on a machine with one. The Monte Carlo
contract itself runs on the GPU too, through the ``device`` fixture (``test_contract.py``).
Agreement between devices is to round-off: the same formulas, in float64, with different
reduction orders in cuBLAS and in vectorised transcendental functions.
"""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from ntkit import predict
from ntkit.testing import check_layer

from test_conv import CASES, images
from zoo import ZOO

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")
ROUND_OFF = dict(rtol=1e-11, atol=1e-12)


def _agree(cpu: nk.Kernel, gpu: nk.Kernel) -> None:
    assert gpu.device.type == "cuda"
    for field in ("nngp", "ntk", "var1", "var2"):
        a, b = getattr(cpu, field), getattr(gpu, field)
        if a is not None:
            torch.testing.assert_close(b.cpu(), a, **ROUND_OFF)


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_fully_connected_kernels_on_the_gpu_equal_the_cpu(entry):
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[-1] = x[0]
    net = entry.build()
    _agree(net.kernel(x), net.kernel(x.to(CUDA)))
    _agree(net.kernel(x[:4], x[3:]), net.kernel(x[:4].to(CUDA), x[3:].to(CUDA)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_convolutional_kernels_on_the_gpu_equal_the_cpu(case):
    x = images(n=5, spatial=case.spatial)
    net = case.build()
    _agree(net.kernel(x), net.kernel(x.to(CUDA)))
    _agree(net.kernel(x[:3], x[2:], block_size=2), net.kernel(x[:3].to(CUDA), x[2:].to(CUDA), block_size=2))


def test_myrtle_float32_on_the_gpu_is_finite_and_positive_semidefinite():
    conv = lambda: nk.Conv(16, (3, 3), padding="same", W_std=2**0.5, b_std=None)
    net = nk.serial(
        conv(), nk.ReLU(), conv(), nk.ReLU(), nk.AvgPool((2, 2)), conv(), nk.ReLU(), nk.AvgPool((2, 2)),
        conv(), nk.ReLU(), nk.GlobalAvgPool(), nk.Dense(10),
    )
    x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x[-1] = x[0]
    k32 = net.kernel(x.to(CUDA), dtype=torch.float32)
    k64 = net.kernel(x, dtype=torch.float64)
    for name in ("nngp", "ntk"):
        got = getattr(k32, name).double().cpu()
        assert bool(torch.isfinite(got).all())
        assert torch.equal(got, got.T)
        assert float(torch.linalg.eigvalsh(got).min()) > -1e-5 * float(got.diagonal().max())
        torch.testing.assert_close(got, getattr(k64, name), rtol=1e-4, atol=1e-5)


def test_cnn_monte_carlo_contract_on_the_gpu():
    check_layer(CASES[1].build(), images(spatial=CASES[1].spatial), wrap=False, device=CUDA)
    check_layer(CASES[8].build(), images(spatial=CASES[8].spatial), wrap=False, device=CUDA)


@pytest.mark.parametrize("implementation", ["jacobian_contraction", "ntk_vector_products", "structured", "auto"])
def test_empirical_ntk_of_a_cnn_on_the_gpu(implementation):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).double()
    x1, x2 = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(3, 3, 8, 8, dtype=torch.float64)
    cpu = nk.empirical_ntk(model, x1, x2, implementation=implementation)
    gpu = nk.empirical_ntk(model.to(CUDA), x1.to(CUDA), x2.to(CUDA), implementation=implementation)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, **ROUND_OFF)


def test_monte_carlo_kernel_on_the_gpu_is_within_its_standard_error():
    net = nk.serial(nk.Dense(256, 1.3, 0.2), nk.ReLU(), nk.Dense(256, 1.1, 0.1))
    x = torch.randn(4, 3, dtype=torch.float64)
    estimate = nk.monte_carlo_kernel(net, x.to(CUDA), n_samples=64, seed=0)
    exact = net.kernel(x)
    for name in ("nngp", "ntk"):
        mean, error = getattr(estimate, name).cpu(), getattr(estimate, name + "_se").cpu()
        assert float(((mean - getattr(exact, name)).abs() / error.clamp_min(1e-12)).max()) < 5


def test_training_predictions_on_the_gpu_equal_the_cpu():
    g = torch.Generator().manual_seed(3)
    x, xt, y = torch.randn(20, 4, generator=g), torch.randn(7, 4, generator=g), torch.randn(20, 2, generator=g)
    net = nk.serial(nk.Dense(64, 1.5, 0.1), nk.Erf(), nk.Dense(1))
    outs = []
    for device in ("cpu", CUDA):
        k_dd = net.kernel(x.double().to(device))
        k_td = net.kernel(xt.double().to(device), x.double().to(device))
        fn = predict.gradient_descent_mse(k_dd.ntk, y.double().to(device), learning_rate=1.0)
        outs.append([fn(t, k_test_train=k_td.ntk) for t in (0.5, 10.0, None)])
    for cpu, gpu in zip(*outs):
        for a, b in zip(cpu, gpu):
            torch.testing.assert_close(b.cpu(), a, **ROUND_OFF)
