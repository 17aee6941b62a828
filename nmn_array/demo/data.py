"""The digits data set (bundled with scikit-learn, so no download) and its fixed split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Fraction of the 1797 images held out for testing, and the split's fixed seed: the
#: split never depends on ``--seed``, so runs with different seeds test on the same images.
TEST_SIZE = 0.25
SPLIT_SEED = 0
N_CLASSES = 10
SIDE = 8


@dataclass(frozen=True)
class Digits:
    """Train and test arrays: ``x`` float32 in [0, 1] of shape (n, 64), ``y`` int32 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __str__(self) -> str:
        return (
            f"digits: {len(self.x_train)} train / {len(self.x_test)} test images, "
            f"{SIDE}x{SIDE} pixels, {N_CLASSES} classes"
        )


def load_digits(limit: int | None = None) -> Digits:
    """Load scikit-learn's 8x8 digits with a stratified 75/25 split (``random_state=0``).

    Parameters
    ----------
    limit : int, optional
        Keep only the first ``limit`` training images (for quick test runs); the test set is
        never reduced.

    Examples
    --------
    >>> d = load_digits()
    >>> d.x_train.shape, d.x_test.shape, d.x_train.dtype.name, float(d.x_train.max())
    ((1347, 64), (450, 64), 'float32', 1.0)
    """
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    x, y = _load(return_X_y=True)
    # Pixels are 0..16 ink counts; scale to [0, 1] so that the yat distance and the ReLU
    # baselines see inputs of unit scale.
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    return Digits(x_train, y_train, x_test, y_test)
