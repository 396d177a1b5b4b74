"""The digits dataset, the kernel-regression helper and the ``ntkit demo`` command."""

from __future__ import annotations

import csv
import sys
from importlib.util import find_spec

import numpy as np
import pytest
import torch

from ntkit import NtkitError
from ntkit._kernel_regression import kernel_regression
from ntkit.cli import main

EPS = np.finfo(np.float64).eps
needs_sklearn = pytest.mark.skipif(find_spec("sklearn") is None, reason="needs pip install ntkit[demo]")
needs_demo = pytest.mark.skipif(
    find_spec("sklearn") is None or find_spec("matplotlib") is None, reason="needs pip install ntkit[demo]"
)


# ---------------------------------------------------------------------------------------------
# datasets.load_digits


@pytest.fixture(scope="module")
def digits():
    from ntkit.datasets import load_digits

    return load_digits()


@needs_sklearn
def test_digits_shapes_dtypes_and_targets(digits):
    assert digits.x_train.shape == (1000, 64) and digits.x_test.shape == (797, 64)
    assert digits.y_train.shape == (1000, 10) and digits.y_test.shape == (797, 10)
    assert digits.labels_train.shape == (1000,) and digits.labels_test.shape == (797,)
    for x in (digits.x_train, digits.y_train, digits.x_test, digits.y_test):
        assert x.dtype == torch.float64 and bool(torch.isfinite(x).all())
    assert digits.labels_train.dtype == torch.int64
    for y, labels in ((digits.y_train, digits.labels_train), (digits.y_test, digits.labels_test)):
        expected = torch.nn.functional.one_hot(labels, 10).double() - 0.1  # documented targets
        assert torch.equal(y, expected)


@needs_sklearn
def test_digits_inputs_lie_on_the_sphere_of_radius_sqrt_d(digits):
    # "example" normalization: |x|^2 / d = 1, up to the rounding of one rescaling (a few eps).
    for x in (digits.x_train, digits.x_test):
        np.testing.assert_allclose(x.square().sum(1).numpy() / 64, 1.0, rtol=0, atol=16 * EPS)


@needs_sklearn
def test_digits_split_is_stratified_disjoint_complete_and_seeded(digits):
    from sklearn.datasets import load_digits as raw_digits

    from ntkit.datasets import load_digits

    raw = raw_digits()
    # Stratified: each class's share of the training set is its share of the whole, to one image.
    whole = np.bincount(raw.target, minlength=10) / len(raw.target)
    assert np.all(np.abs(np.bincount(digits.labels_train.numpy(), minlength=10) - 1000 * whole) <= 1)
    # Disjoint and complete: train + test are the 1797 images, each once (compared on the sphere).
    x_all = np.concatenate([digits.x_train.numpy(), digits.x_test.numpy()])
    on_sphere = raw.data * (8 / np.linalg.norm(raw.data, axis=1, keepdims=True))
    assert sorted(map(_key, x_all)) == sorted(map(_key, on_sphere))
    # Reproducible for a seed, different for another.
    assert torch.equal(load_digits(seed=0).labels_test, digits.labels_test)
    assert not torch.equal(load_digits(seed=1).labels_test, digits.labels_test)
    assert load_digits(test_size=0.5).x_test.shape[0] == 899  # sklearn rounds the fraction up


def _key(row: np.ndarray) -> tuple:
    return tuple(np.round(row, 9))


@needs_sklearn
def test_digits_feature_standardization_uses_training_statistics():
    from ntkit.datasets import load_digits

    data = load_digits(normalize="feature")
    x = data.x_train.numpy()
    constant = x.std(0) == 0  # border pixels always 0 in training: centred, not divided by 0
    assert constant.any() and np.all(x[:, constant] == 0)
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(x[:, ~constant].std(0), 1, rtol=1e-12)
    assert bool(torch.isfinite(data.x_test).all())
    with pytest.raises(NtkitError, match="normalize"):
        load_digits(normalize="pixel")


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    from ntkit.datasets import load_digits

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install ntkit\[demo\]"):
        load_digits()


# ---------------------------------------------------------------------------------------------
# _kernel_regression.kernel_regression


def _psd_kernel(n: int, cond: float, seed: int) -> np.ndarray:
    """Q diag(eigenvalues) Q^T with eigenvalues spread over [1, cond]: a known condition number."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.geomspace(1.0, cond, n)) @ q.T


@pytest.mark.parametrize("diag_reg", [0.0, 1e-3, 0.5])
def test_kernel_regression_matches_a_direct_solve(diag_reg):
    n, m, c, cond = 40, 7, 3, 1e2
    k = _psd_kernel(n, cond, seed=0)
    rng = np.random.default_rng(1)
    k_sx, y = rng.standard_normal((m, n)), rng.standard_normal((n, c))
    # Independent formula: the ridge is relative, diag_reg * trace / n (mean diagonal ~ 22 here,
    # so an absolute ridge would fail for diag_reg > 0).
    expected = k_sx @ np.linalg.solve(k + diag_reg * np.trace(k) / n * np.eye(n), y)
    got = kernel_regression(torch.from_numpy(k), torch.from_numpy(k_sx), torch.from_numpy(y), diag_reg)
    assert got.dtype == torch.float64 and got.shape == (m, c)
    # Both solves are backward stable: relative error <= O(n * cond * eps) each.
    tol = n * cond * EPS * np.abs(expected).max()
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=tol)


def test_kernel_regression_interpolates_without_ridge_and_ignores_kernel_scale():
    n, cond = 50, 1e3
    k = torch.from_numpy(_psd_kernel(n, cond, seed=2))
    y = torch.from_numpy(np.random.default_rng(3).standard_normal(n))  # 1-D targets too
    fit = kernel_regression(k, k, y, diag_reg=0.0)
    # K K^{-1} y = y, up to the solve's error n * cond * eps relative to |y|.
    np.testing.assert_allclose(fit.numpy(), y.numpy(), rtol=0, atol=n * cond * EPS * y.abs().max().item())
    # With a relative ridge, scaling the kernel by 1000 changes nothing (up to rounding).
    ridge = kernel_regression(k, k[:5], y, diag_reg=0.1)
    scaled = kernel_regression(1e3 * k, 1e3 * k[:5], y, diag_reg=0.1)
    # Scaling rounds K once (eps, relative); the solve amplifies that by cond(K + ridge) = 63
    # here (mean eigenvalue 152), and n * 10 = 500 leaves room for the two solves' own rounding.
    tol = n * 10 * EPS * ridge.abs().max().item()
    np.testing.assert_allclose(scaled.numpy(), ridge.numpy(), rtol=0, atol=tol)
    assert not torch.allclose(ridge, fit[:5])  # and the ridge does change the fit


def test_kernel_regression_errors():
    k = torch.eye(4)
    with pytest.raises(NtkitError, match="not positive definite.*increase diag_reg"):
        kernel_regression(torch.diag(torch.tensor([1.0, 1.0, 1.0, -1.0])), k, torch.ones(4), diag_reg=0.0)
    with pytest.raises(NtkitError, match=r"k_test_train has shape \(4, 3\)"):
        kernel_regression(k, torch.ones(4, 3), torch.ones(4))
    with pytest.raises(NtkitError, match="diag_reg"):
        kernel_regression(k, k, torch.ones(4), diag_reg=-1.0)


# ---------------------------------------------------------------------------------------------
# the demo


# Accuracy threshold for depth >= 1. On this split: NNGP 0.994, NTK 0.9925 at depth 1, and 0.931
# for the linear kernel (depth 0, the readout alone). One binomial standard error at p = 0.99 on
# 797 test images is 0.0035, so 0.97 sits ~6 SE below the ReLU kernels (round-off changes of the
# kernel flip a borderline image or two, 0.13% each) and ~11 SE above the linear kernel: it fails
# if the hidden layers contributed nothing or predictions were misaligned with labels.
ACCURACY_THRESHOLD = 0.97


@needs_sklearn
def test_concatenated_kernel_slices_equal_the_cross_kernel(digits):
    from ntkit.demo import relu_mlp

    net = relu_mlp(2)
    k = net.kernel(torch.cat([digits.x_train[:100], digits.x_test[:60]]))
    cross = net.kernel(digits.x_test[:60], digits.x_train[:100])
    for name in ("nngp", "ntk"):  # the same pairwise formula: equal to a few ulps
        np.testing.assert_allclose(
            getattr(k, name)[100:, :100].numpy(), getattr(cross, name).numpy(), rtol=1e-13, atol=0
        )


@needs_sklearn
def test_linear_kernel_stays_below_the_threshold(digits):
    # Negative control of ACCURACY_THRESHOLD: without hidden layers the test would fail.
    from ntkit.demo import accuracies

    nngp, ntk, _ = accuracies(digits, depth=0)
    assert max(nngp, ntk) < ACCURACY_THRESHOLD


@needs_demo
def test_cli_demo_quick_writes_figure_and_accurate_table(tmp_path, capsys):
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    assert main(["demo", "--quick", "--threads", "1", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # restored for the rest of the process
    figure = out / "accuracy_vs_depth.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert str(figure.resolve()) in printed
    with open(out / "accuracy_vs_depth.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["depth"]) for r in rows] == [1, 2]
    for r in rows:
        assert float(r["ntk_accuracy"]) > ACCURACY_THRESHOLD
        assert float(r["nngp_accuracy"]) > ACCURACY_THRESHOLD
        assert f"{float(r['ntk_accuracy']):.4f}" in printed  # the table printed is the one saved


def test_cli_version(capsys):
    import ntkit

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ntkit {ntkit.__version__}"
