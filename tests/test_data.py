"""The offline synthetic sentiment task."""
from __future__ import annotations

import numpy as np
import pytest

from codesign.quantize.data import NEGATIVE, NEGATORS, POSITIVE, SyntheticSentiment


def _label_by_hand(text: str) -> int:
    """The task's rule, written out again: a negator flips the next polarity word within 2 tokens."""
    words = text.split()[1:-1]  # drop [CLS] and [SEP]
    total, negated_at = 0, None
    for i, w in enumerate(words):
        if w in NEGATORS:
            negated_at = i
        elif w in POSITIVE or w in NEGATIVE:
            s = 1 if w in POSITIVE else -1
            if negated_at is not None and i - negated_at <= 2:
                s = -s
            total += s
            negated_at = None
    assert total != 0
    return int(total > 0)


def test_deterministic_and_shaped():
    task = SyntheticSentiment(seq_len=16, vocab_size=1000)
    a_ids, a_y = task.sample(200, seed=3)
    b_ids, b_y = task.sample(200, seed=3)
    assert np.array_equal(a_ids, b_ids) and np.array_equal(a_y, b_y)
    assert a_ids.shape == (200, 16) and a_ids.dtype == np.int64
    assert (a_ids[:, 0] == 1).all()  # [CLS]
    assert ((a_ids == 2).sum(axis=1) == 1).all()  # one [SEP]
    assert a_ids.max() < len(task.vocab)
    assert not np.array_equal(a_ids, task.sample(200, seed=4)[0])


def test_labels_follow_the_rule_and_are_balanced():
    task = SyntheticSentiment(seq_len=16)
    ids, y = task.sample(2000, seed=0)
    texts = task.decode(ids)
    assert [_label_by_hand(t) for t in texts] == y.tolist()
    assert 0.4 < y.mean() < 0.6
    negated = sum(any(n in t.split() for n in NEGATORS) for t in texts)
    assert negated > 400  # negation is frequent enough to matter


def test_negation_flips():
    task = SyntheticSentiment()
    assert task.polarity(["the", "movie", "was", "good"]) == 1
    assert task.polarity(["the", "movie", "was", "not", "good"]) == -1
    assert task.polarity(["not", "very", "good"]) == -1
    assert task.polarity(["not", "the", "movie", "was", "good"]) == 1  # outside the window


def test_bad_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        SyntheticSentiment(seq_len=3)
    with pytest.raises(ValueError, match="vocab_size"):
        SyntheticSentiment(vocab_size=10)
