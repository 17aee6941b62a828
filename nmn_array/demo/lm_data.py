"""The language-model demo's text: CPython's own help texts (``pydoc_data.topics``).

``pydoc_data`` ships with every CPython install, so the demo needs no download. The topics
are joined in sorted key order, characters become integer ids, and the first 90 % of the
text trains while the last 10 % validates (a split by position, so no validation window
overlaps a training window).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

#: Fraction of the text (by position) used for training; the rest validates.
TRAIN_FRACTION = 0.9
#: Characters seen fewer times than this in the whole text share one id (shown as ``RARE``):
#: a dozen accented letters and symbols that no model could learn from a handful of uses.
MIN_COUNT = 10
RARE = "\N{REPLACEMENT CHARACTER}"


@dataclass(frozen=True)
class CharText:
    """The encoded text and its vocabulary.

    Attributes
    ----------
    train, val : numpy.ndarray
        int32 character ids, the first 90 % and the last 10 % of the text.
    chars : str
        ``chars[i]`` is the character of id ``i`` (``RARE`` for the shared rare id).
    """

    train: np.ndarray
    val: np.ndarray
    chars: str

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids."""
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of ``text`` (characters outside the vocabulary get the rare id).

        Examples
        --------
        >>> data = load_text()
        >>> data.decode(data.encode("def f(x):")) == "def f(x):"
        True
        """
        index = {c: i for i, c in enumerate(self.chars)}
        rare = index.get(RARE, 0)
        return np.array([index.get(c, rare) for c in text], dtype=np.int32)

    def decode(self, ids) -> str:
        """The characters of ``ids``."""
        return "".join(self.chars[int(i)] for i in ids)

    def __str__(self) -> str:
        return (
            f"pydoc_data.topics: {len(self.train) + len(self.val):,} characters "
            f"({len(self.train):,} train / {len(self.val):,} validation), "
            f"vocabulary {self.vocab_size}"
        )


def load_text() -> CharText:
    """CPython's help topics as character ids, split 90/10 by position.

    Examples
    --------
    >>> data = load_text()
    >>> data.train.dtype.name, int(data.train.max()) < data.vocab_size
    ('int32', True)
    >>> abs(len(data.train) / (len(data.train) + len(data.val)) - TRAIN_FRACTION) < 1e-5
    True
    """
    from pydoc_data.topics import topics

    text = "".join(topics[key] for key in sorted(topics))
    counts = Counter(text)
    common = sorted(c for c, n in counts.items() if n >= MIN_COUNT)
    chars = "".join(common) + (RARE if len(common) < len(counts) else "")
    ids = CharText(np.zeros(0, np.int32), np.zeros(0, np.int32), chars).encode(text)
    cut = int(len(ids) * TRAIN_FRACTION)
    return CharText(ids[:cut], ids[cut:], chars)


def windows(
    ids: np.ndarray, batch_size: int, length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` random windows of ``length`` characters: inputs ``x`` and the next
    characters ``y`` (``x`` shifted by one), both int32 ``(batch_size, length)``.

    Examples
    --------
    >>> x, y = windows(np.arange(100, dtype=np.int32), 2, 5, np.random.default_rng(0))
    >>> x.shape, bool((y == x + 1).all())
    ((2, 5), True)
    """
    if len(ids) < length + 1:
        raise ValueError(
            f"the text has {len(ids)} characters, too few for windows of length {length} + 1"
        )
    starts = rng.integers(0, len(ids) - length, size=batch_size)
    idx = starts[:, None] + np.arange(length + 1)[None, :]
    chunk = ids[idx]
    return np.ascontiguousarray(chunk[:, :-1]), np.ascontiguousarray(chunk[:, 1:])
