"""Small offline datasets for examples, benchmarks and the ``ntkit`` command."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ._errors import NtkitError

NORMALIZATIONS = ("example", "feature")


class Dataset(NamedTuple):
    """A classification dataset split into training and test sets, ready for kernel regression.

    Attributes
    ----------
    x_train : Tensor, shape (N_train, features), float64
    y_train : Tensor, shape (N_train, classes), float64
        Regression targets: centred one-hot rows (0.9 for the class, -0.1 elsewhere).
    x_test : Tensor, shape (N_test, features), float64
    y_test : Tensor, shape (N_test, classes), float64
    labels_train : Tensor, shape (N_train,), int64
        The class index of each training example (``y_train.argmax(1)``).
    labels_test : Tensor, shape (N_test,), int64
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    labels_train: torch.Tensor
    labels_test: torch.Tensor


def load_digits(test_size: int | float = 797, seed: int = 0, normalize: str = "example") -> Dataset:
    """The handwritten digits of scikit-learn (1797 images of 8x8 pixels, 10 classes), offline.

    The images ship with scikit-learn (``sklearn.datasets.load_digits``), so nothing is
    downloaded. They are split once into training and test sets, stratified by class, with
    ``seed`` fixing the split: the default gives 1000 training and 797 test examples.

    Inputs (``normalize``):

    ``"example"`` (default)
        Each image is rescaled to norm :math:`\\sqrt{d}` (:math:`d = 64` pixels), so that the
        input kernel :math:`K(x, x) = \\|x\\|^2 / d` is exactly 1 for every example. This is
        the usual choice for NTK regression: the infinite-width kernels of a network then
        depend only on the angles between inputs (exactly so without biases, Cho & Saul 2009;
        Jacot et al. 2018 put inputs on a sphere), every example reaches the first layer with
        the same variance, and no statistic is estimated from the data. On this split it is
        also the more accurate one (NTK of a one-hidden-layer ReLU network: 0.99 against 0.98).
    ``"feature"``
        Each pixel is standardized with the mean and standard deviation of the training set
        (the scikit-learn ``StandardScaler`` convention). Pixels that are constant over the
        training set (several border pixels are always 0) keep scale 1, so they stay constant
        instead of dividing by zero.

    Targets are centred one-hot vectors, :math:`y = e_c - 0.1` (0.9 for the class, -0.1
    elsewhere), the convention of Lee et al. 2018 and Arora et al. 2019:
    their mean over classes is 0, as for the outputs of a network at initialization. Kernel
    regression is linear in the targets and the shift adds the same amount to every class,
    so the predicted class (argmax) is the same as with plain one-hot targets; only the
    regression error changes.

    Parameters
    ----------
    test_size : int or float
        Number of test examples, or their fraction of the 1797 (as in scikit-learn's
        ``train_test_split``); the rest is the training set.
    seed : int
        Seed of the stratified split.
    normalize : "example" or "feature"
        How inputs are scaled; see above.

    Returns
    -------
    Dataset
        ``x_*`` of shape (N, 64), ``y_*`` of shape (N, 10), all float64, and the integer
        labels.

    Raises
    ------
    ImportError
        When scikit-learn is missing: install the extra with ``pip install ntkit[demo]``.

    References
    ----------
    Lee, Bahri, Novak, Schoenholz, Pennington, Sohl-Dickstein, "Deep neural networks as
    Gaussian processes", ICLR 2018. Arora, Du, Hu, Li, Salakhutdinov, Wang, "On exact
    computation with an infinitely wide neural net", NeurIPS 2019.
    """
    if normalize not in NORMALIZATIONS:
        raise NtkitError(f"load_digits: normalize must be 'example' or 'feature', got {normalize!r}")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            "ntkit.datasets.load_digits needs scikit-learn, which ships the digits images; "
            "install it with: pip install ntkit[demo]"
        ) from error

    digits = sklearn_digits()
    x_train, x_test, labels_train, labels_test = train_test_split(
        digits.data.astype(np.float64), digits.target, test_size=test_size,
        stratify=digits.target, random_state=seed,
    )
    x_train, x_test = _normalize(x_train, x_test, normalize)
    n_classes = len(digits.target_names)
    return Dataset(
        x_train=torch.from_numpy(x_train),
        y_train=_centred_one_hot(labels_train, n_classes),
        x_test=torch.from_numpy(x_test),
        y_test=_centred_one_hot(labels_test, n_classes),
        labels_train=torch.from_numpy(labels_train.astype(np.int64)),
        labels_test=torch.from_numpy(labels_test.astype(np.int64)),
    )


#: Datasets bundled with scikit-learn (nothing to download): name -> (loader, default test size).
TABULAR = {
    "wine": ("load_wine", 0.33),
    "breast_cancer": ("load_breast_cancer", 0.3),
    "iris": ("load_iris", 0.33),
}
DATASETS = ("digits",) + tuple(TABULAR)


def load_dataset(name: str = "digits", test_size: int | float | None = None, seed: int = 0) -> Dataset:
    """A bundled classification dataset by name: ``"digits"`` (see :func:`load_digits`),
    ``"wine"`` (178 x 13, 3 classes), ``"breast_cancer"`` (569 x 30, 2 classes) or ``"iris"``
    (150 x 4, 3 classes), all shipped with scikit-learn, so nothing is downloaded.

    The tabular datasets' features have different units, so each is first standardized with the
    training set's mean and standard deviation, then every example is put on the sphere of
    radius :math:`\\sqrt{d}` as for the digits (input kernel :math:`K(x, x) = 1`). Targets are
    centred one-hot vectors, :math:`e_c - 1/C` (``1/C`` = 0.1 for the ten digits), whose mean over
    classes is 0 like a network's outputs at initialization. The split is stratified and seeded;
    ``test_size`` defaults to 797 images for the digits and about a third of the tabular sets.
    """
    if name == "digits":
        return load_digits(797 if test_size is None else test_size, seed=seed)
    if name not in TABULAR:
        raise NtkitError(f"load_dataset: unknown dataset {name!r}; choose one of {list(DATASETS)}")
    loader, default_test = TABULAR[name]
    try:
        import sklearn.datasets
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            f"ntkit.datasets.load_dataset({name!r}) needs scikit-learn, which ships the data; "
            "install it with: pip install ntkit[demo]"
        ) from error
    raw = getattr(sklearn.datasets, loader)()
    x_train, x_test, labels_train, labels_test = train_test_split(
        raw.data.astype(np.float64), raw.target, test_size=default_test if test_size is None else test_size,
        stratify=raw.target, random_state=seed,
    )
    x_train, x_test = _normalize(x_train, x_test, "feature")
    x_train, x_test = _to_sphere(x_train), _to_sphere(x_test)
    n_classes = len(raw.target_names)
    return Dataset(
        x_train=torch.from_numpy(x_train),
        y_train=_centred_one_hot(labels_train, n_classes),
        x_test=torch.from_numpy(x_test),
        y_test=_centred_one_hot(labels_test, n_classes),
        labels_train=torch.from_numpy(labels_train.astype(np.int64)),
        labels_test=torch.from_numpy(labels_test.astype(np.int64)),
    )


def _normalize(x_train: np.ndarray, x_test: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    if how == "example":
        return _to_sphere(x_train), _to_sphere(x_test)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # constant pixels: centred to 0, not divided by 0
    return (x_train - mean) / std, (x_test - mean) / std


def _to_sphere(x: np.ndarray) -> np.ndarray:
    """Rows rescaled to norm sqrt(features); an all-zero row (none in digits) stays zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * (np.sqrt(x.shape[1]) / np.where(norms > 0, norms, 1.0))


def _centred_one_hot(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """``e_c - 1/C``: 0.9 and -0.1 for the ten digits."""
    y = np.full((len(labels), n_classes), -1.0 / n_classes)
    y[np.arange(len(labels)), labels] += 1.0
    return torch.from_numpy(y)
