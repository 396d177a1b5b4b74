"""The bundled datasets and the ``ntkit demo`` job (finite networks against their infinite-width limit)."""

from __future__ import annotations

import csv
import json
import math
import sys
from importlib.util import find_spec

import numpy as np
import pytest
import torch

from ntkit import NtkitError
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
# datasets.load_dataset: the tabular sets bundled with scikit-learn


@needs_sklearn
@pytest.mark.parametrize("name, n, d, classes", [("wine", 178, 13, 3), ("breast_cancer", 569, 30, 2), ("iris", 150, 4, 3)])
def test_tabular_datasets_are_standardized_on_the_sphere_with_centred_targets(name, n, d, classes):
    from ntkit.datasets import load_dataset

    data = load_dataset(name)
    assert data.x_train.shape[0] + data.x_test.shape[0] == n and data.x_train.shape[1] == d
    for x in (data.x_train, data.x_test):  # |x|^2 / d = 1 up to the rounding of one rescaling
        np.testing.assert_allclose(x.square().sum(1).numpy() / d, 1.0, rtol=0, atol=16 * EPS)
    for y, labels in ((data.y_train, data.labels_train), (data.y_test, data.labels_test)):
        expected = torch.nn.functional.one_hot(labels, classes).double() - 1.0 / classes
        torch.testing.assert_close(y, expected, rtol=0, atol=EPS)
        assert abs(float(y.sum(1).abs().max())) < 8 * EPS  # centred: mean over classes 0
    # Standardized before the projection: no single feature dominates the inputs' directions.
    share = data.x_train.square().mean(0) / d  # each feature's share of |x|^2 / d
    assert float(share.max()) < 5.0 / d
    with pytest.raises(NtkitError, match=r"unknown dataset 'mnist'; choose one of \['digits'"):
        load_dataset("mnist")


# ---------------------------------------------------------------------------------------------
# the demo's pieces against independent computations


def test_expected_accuracy_matches_monte_carlo():
    """Gauss-Hermite integral of P(argmax = label) against sampling the Gaussian outputs."""
    from ntkit.demo import expected_accuracy

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (60,), generator=generator)
    mean = torch.randn(2, 60, 4, generator=generator, dtype=torch.float64) * 0.5
    mean += torch.nn.functional.one_hot(labels, 4)  # the right class ahead by 1 on average
    variance = torch.rand(2, 60, generator=generator, dtype=torch.float64) + 0.05
    exact = expected_accuracy(mean, variance, labels)
    draws = 20_000
    noise = torch.randn(draws, 2, 60, 4, generator=generator, dtype=torch.float64)
    samples = mean + variance.sqrt()[..., None] * noise
    hits = (samples.argmax(-1) == labels).double()  # (draws, T, m)
    sampled = hits.mean((0, 2)).numpy()
    # Standard error of a mean of 60 * 20000 Bernoulli draws (p ~ 0.5): <= 0.5 / sqrt(1.2e6);
    # 5 standard errors.
    tolerance = 5 * 0.5 / math.sqrt(draws * 60)
    np.testing.assert_allclose(exact, sampled, rtol=0, atol=tolerance)
    # Negative control: doubling the variance (a plausible sqrt slip) moves it far outside.
    assert np.abs(expected_accuracy(mean, 2 * variance, labels) - sampled).max() > 4 * tolerance
    # With a vanishing variance it is the accuracy of the mean.
    tiny = expected_accuracy(mean, torch.full_like(variance, 1e-20), labels)
    np.testing.assert_allclose(tiny, (mean.argmax(-1) == labels).double().mean(-1).numpy(), atol=1e-12)


@needs_sklearn
def test_readout_training_is_exactly_the_closed_form_with_the_empirical_kernel():
    """Training the readout only is a linear model: after t steps its test outputs are those of
    gradient_descent_mse with the finite network's own readout kernel
    K = W_std^2 h(x) h(x')^T / width + b_std^2 (h the fixed hidden features), from the same f_0.
    This checks the training loop's loss, learning rate and steps against the library's
    convention independently of the infinite-width limit."""
    from ntkit import predict
    from ntkit.datasets import load_dataset
    from ntkit.demo import READOUT_B_STD, READOUT_W_STD, checkpoints, mlp, train

    data = load_dataset("iris")
    torch.manual_seed(3)
    net = mlp(256, 3)
    net(data.x_train[:1].float())
    steps = checkpoints(60, 8)
    f0_train, f0_test, trained = train(net, data, 0.5, steps, readout_only=True)
    with torch.no_grad():
        h_train, h_test = (net[0](x.float()).double() for x in (data.x_train, data.x_test))
    width = h_train.shape[1]
    k_train = READOUT_W_STD**2 * h_train @ h_train.T / width + READOUT_B_STD**2
    k_test = READOUT_W_STD**2 * h_test @ h_train.T / width + READOUT_B_STD**2
    exact = predict.gradient_descent_mse(k_train, data.y_train, 0.5, discrete=True)(
        torch.as_tensor(steps, dtype=torch.float64), f0_train, f0_test, k_test
    ).test
    # float32 training: each of <= 60 steps rounds the outputs (O(1)) to ~1e-7 relative, and the
    # contracting dynamics do not amplify it: 60 * 1e-7 * 10 ~ 1e-4.
    torch.testing.assert_close(trained, exact, rtol=0, atol=1e-4)
    # Negative control: the loss without the 1/2 (time running twice as fast) is far off.
    wrong = predict.gradient_descent_mse(k_train, data.y_train, 1.0, discrete=True)(
        torch.as_tensor(steps, dtype=torch.float64), f0_train, f0_test, k_test
    ).test
    assert float((trained - wrong).abs().max()) > 1e-2


@needs_sklearn
def test_infinite_curves_start_at_the_prior():
    """At step 0 the expected test loss is (|y|^2 + C tr K(x*, x*)) / 2N, from the NNGP of the
    test inputs computed directly, and the expected accuracy that of outputs N(0, K)."""
    from ntkit import predict
    from ntkit.datasets import load_dataset
    from ntkit.demo import _infinite_curves, mlp

    data = load_dataset("wine")
    net = mlp(1, 3)
    k = net.kernel(torch.cat([data.x_train, data.x_test]))
    n = data.x_train.shape[0]
    lr = 0.5 * predict.max_learning_rate(k.ntk[:n, :n], data.y_train.numel())
    curves = _infinite_curves(k, data, lr, np.array([0, 20, 200]))["ntk"]
    k_tt = net.kernel(data.x_test).nngp
    expected = (data.y_test.square().sum() + 3 * torch.trace(k_tt)) / (2 * data.y_test.numel())
    assert curves.loss[0] == pytest.approx(float(expected), rel=1e-12)
    assert 0.2 < curves.accuracy[0] < 0.45  # about 1/3: at initialization the guess is random
    assert curves.loss[2] < curves.loss[1] < curves.loss[0] and curves.accuracy[2] > 0.8


def test_demo_rejects_bad_options(tmp_path):
    from ntkit.demo import run

    for kwargs, pattern in (
        (dict(widths=(64,)), r"widths must be at least two distinct positive integers, got \(64,\)"),
        (dict(steps=0), r"steps must be a positive integer, got 0"),
        (dict(dataset="cifar"), r"unknown dataset 'cifar'"),
    ):
        with pytest.raises(NtkitError, match=pattern):
            run(out=tmp_path, progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------
# the command


@needs_demo
def test_cli_demo_writes_figure_curves_and_summary_that_agree(tmp_path, capsys):
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    argv = ["demo", "--dataset", "iris", "--widths", "16", "256", "--steps", "40", "--threads", "1",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert torch.get_num_threads() == threads  # restored for the rest of the process
    figure = out / "finite_vs_infinite.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert str(figure.resolve()) in printed
    summary = json.loads((out / "finite_vs_infinite.json").read_text())
    assert summary["dataset"] == "iris" and summary["widths"] == [16, 256] and summary["steps"] == 40
    with open(out / "finite_vs_infinite.csv") as f:
        rows = list(csv.DictReader(f))
    last = [r for r in rows if r["step"] == "40"]
    assert {(r["regime"], r["width"]) for r in last} == {(g, w) for g in ("ntk", "nngp") for w in ("16", "256", "inf")}
    for r in last:  # the CSV, the JSON and the printed table hold the same numbers
        final = summary["final"][r["regime"]][r["width"]]
        assert float(r["test_loss"]) == pytest.approx(final["test_loss"], rel=1e-5)
        assert f"{final['test_loss']:.4f}" in printed
    # The finite networks approach the infinite-width one: 16 times wider, about 4 times closer
    # (width^-1/2); "closer" is robust to the spread of a single network's distance.
    for regime in ("ntk", "nngp"):
        d = summary["distance_to_infinite_width"][regime]
        assert d["256"] < 0.6 * d["16"], (regime, d)
    # After 40 steps the infinite-width network has learned (iris: chance is 1/3).
    assert summary["final"]["ntk"]["inf"]["test_accuracy"] > 0.8


def test_cli_version(capsys):
    import ntkit

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ntkit {ntkit.__version__}"
