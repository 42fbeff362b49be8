"""Offline data for training and calibration (nothing is downloaded).

``SyntheticSentiment`` generates a binary sentiment task with the structure that makes
SST-2 need attention rather than a bag of words: polarity words, negators that flip
the polarity of the next polarity word within a short window, intensifiers, and neutral
filler. The label is the sign of the summed (possibly negated) polarities; sentences
whose sum is zero are redrawn. Generation is deterministic in ``seed``.

Token ids: 0 = [PAD], 1 = [CLS], 2 = [SEP], 3 = [UNK]; words follow, then unused ids up
to ``vocab_size`` (so a model with a larger vocabulary, e.g. 30522, can use the task).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SPECIAL", "POSITIVE", "NEGATIVE", "NEGATORS", "INTENSIFIERS", "FILLER", "SyntheticSentiment"]

SPECIAL = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
POSITIVE = ("good", "great", "excellent", "wonderful", "delightful", "charming", "superb", "moving",
            "funny", "brilliant", "enjoyable", "beautiful", "clever", "fresh", "gripping", "warm")
NEGATIVE = ("bad", "awful", "terrible", "boring", "dull", "tedious", "weak", "clumsy",
            "lifeless", "mediocre", "painful", "stale", "messy", "bland", "forgettable", "silly")
NEGATORS = ("not", "never", "hardly", "barely", "no")
INTENSIFIERS = ("very", "really", "truly", "quite", "so")
FILLER = ("the", "a", "movie", "film", "plot", "story", "acting", "cast", "it", "was", "is", "and",
          "but", "with", "of", "this", "that", "script", "ending", "scenes", "music", "director",
          "overall", "somewhat", "at", "times", "in", "its", "own", "way", "characters", "pace")


@dataclass(frozen=True)
class SyntheticSentiment:
    """A deterministic synthetic sentiment task.

    ``seq_len`` includes [CLS] and [SEP]; sentences are padded with [PAD] to ``seq_len``.
    ``negation_window``: a negator flips the next polarity word at most this many
    tokens later (an intensifier between them is allowed).
    """

    seq_len: int = 16
    vocab_size: int = 1000
    min_words: int = 4
    negation_rate: float = 0.35
    negation_window: int = 2

    def __post_init__(self) -> None:
        if self.seq_len < 6:
            raise ValueError(f"SyntheticSentiment: seq_len={self.seq_len} too short (>= 6)")
        if self.vocab_size < len(self.vocab):
            raise ValueError(f"SyntheticSentiment: vocab_size={self.vocab_size} < {len(self.vocab)} words")
        if not 0 <= self.negation_rate <= 1:
            raise ValueError(f"SyntheticSentiment: negation_rate={self.negation_rate} outside [0, 1]")

    @property
    def vocab(self) -> tuple[str, ...]:
        return SPECIAL + POSITIVE + NEGATIVE + NEGATORS + INTENSIFIERS + FILLER

    def token_id(self, word: str) -> int:
        return self.vocab.index(word)

    def _sentence(self, rng: np.random.Generator) -> tuple[list[str], int]:
        body_len = self.seq_len - 2
        while True:
            n = int(rng.integers(self.min_words, body_len + 1))
            words: list[str] = []
            total = 0
            n_polar = int(rng.integers(1, 4))
            slots = sorted(rng.choice(n, size=min(n_polar, n), replace=False).tolist())
            i = 0
            for slot in slots:
                while i < slot and len(words) < n:
                    words.append(str(rng.choice(FILLER)))
                    i += 1
                polarity = 1 if rng.random() < 0.5 else -1
                prefix: list[str] = []
                if rng.random() < self.negation_rate:
                    prefix.append(str(rng.choice(NEGATORS)))
                    if self.negation_window >= 2 and rng.random() < 0.3:
                        prefix.append(str(rng.choice(INTENSIFIERS)))
                    sign = -1
                else:
                    if rng.random() < 0.2:
                        prefix.append(str(rng.choice(INTENSIFIERS)))
                    sign = 1
                word = str(rng.choice(POSITIVE if polarity > 0 else NEGATIVE))
                words += prefix + [word]
                total += sign * polarity
                i += 1
            words = words[:body_len]
            # the truncation may cut a polarity word: recompute the label from the tokens
            total = self.polarity(words)
            if total != 0:
                return words, int(total > 0)

    def polarity(self, words: list[str]) -> int:
        """Summed polarity of a word list under the task's negation rule (the label's definition)."""
        total, flip_until = 0, -1
        for i, w in enumerate(words):
            if w in NEGATORS:
                flip_until = i + self.negation_window
            elif w in POSITIVE or w in NEGATIVE:
                p = 1 if w in POSITIVE else -1
                total += -p if i <= flip_until else p
                flip_until = -1
        return total

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` sentences: token ids int64 ``(n, seq_len)`` and labels int64 ``(n,)`` (1 = positive)."""
        if n < 0:
            raise ValueError(f"SyntheticSentiment.sample: n={n} must be >= 0")
        rng = np.random.default_rng(seed)
        ids = np.zeros((n, self.seq_len), dtype=np.int64)
        labels = np.zeros(n, dtype=np.int64)
        index = {w: k for k, w in enumerate(self.vocab)}
        for r in range(n):
            words, label = self._sentence(rng)
            row = [1] + [index[w] for w in words] + [2]
            ids[r, : len(row)] = row
            labels[r] = label
        return ids, labels

    def decode(self, ids: np.ndarray) -> list[str]:
        """Token ids back to text, without padding."""
        vocab = self.vocab
        return [" ".join(vocab[t] if t < len(vocab) else "[UNK]" for t in row if t != 0) for row in np.atleast_2d(ids)]
