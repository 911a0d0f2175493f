"""Lexical metrics: word tokens, Brunet's index, Honore's statistic, ROUGE recall and LS on hard inputs."""

from __future__ import annotations

import math
import warnings

import pytest

from relearn_local.evaluate.lexical import (EMPTY_BRUNET_INDEX, brunet_index, honore_statistic,
                                            lexical_scores, rouge_recall, rouge_tokens, word_tokens)
from relearn_local.evaluate.scoring import finite_mean, linguistic_score

DEGENERATE = [
    ("", "no tokens"),
    ("ok", "one token"),
    (" ".join(["the"] * 5000), "one word repeated 5,000 times"),
    ("Every word differs here", "V1 == V, every word seen once"),
    ("?!", "punctuation only"),
    ("\n\t  ", "whitespace only"),
]


def test_word_tokens_lowercase_and_split_sentences():
    assert word_tokens("She moved. Then she left.") == ["she", "moved", ".", "then", "she", "left", "."]


def test_word_tokens_keep_abbreviations():
    assert "d.c." in word_tokens("She works in Washington D.C. political circles.")


@pytest.mark.parametrize("text, reason", DEGENERATE)
def test_degenerate_answers_are_finite(text, reason):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = lexical_scores(text)
    for value in (scores.brunet_index, scores.honore_statistic, scores.root_ttr):
        assert math.isfinite(value), reason


def test_empty_answer_values():
    scores = lexical_scores("")
    assert scores.tokens == 0
    assert scores.brunet_index == EMPTY_BRUNET_INDEX
    assert scores.honore_statistic == 0.0
    assert scores.root_ttr == 0.0


def test_repetition_values():
    scores = lexical_scores(" ".join(["the"] * 5000))
    assert scores.tokens == 5000
    assert scores.types == 1
    assert scores.brunet_index == pytest.approx(5000.0)
    assert scores.honore_statistic == pytest.approx(100 * math.log(5000) / 1.1)


def test_all_hapax_answer_uses_offset():
    # V1 == V: the plain formula divides by zero; the 0.1 offset keeps it finite.
    assert honore_statistic(4, 4, 4) == pytest.approx(100 * math.log(4) / 0.1)


def test_brunet_known_value():
    assert brunet_index(20, 15) == pytest.approx(20 ** (15 ** -0.165))


def test_rouge_identical_cjk_is_one():
    text = "占位人物甲的母亲是一名医生，住在上海。"
    assert rouge_recall(text, text).rouge1 == 1.0
    assert rouge_recall(text, text).rougeL == 1.0


def test_rouge_identical_accented_text_is_one():
    text = "Ilse Brønholt-Bâ’s mother lives in Ålesund 😀"
    assert rouge_recall(text, text).rougeL == 1.0


def test_rouge_cjk_characters_are_tokens():
    assert rouge_tokens("占位人物") == ["占", "位", "人", "物"]


def test_rouge_partial_recall():
    scores = rouge_recall("she lives in Oslo", "Mara lives in a flat in Oslo")
    # Ground-truth tokens: mara live in a flat in oslo (7); matched: live, in, oslo (3).
    assert scores.rouge1 == pytest.approx(3 / 7)
    assert scores.rougeL == pytest.approx(3 / 7)


def test_rouge_stems_words():
    assert rouge_recall("she was painting", "painted").rouge1 == 1.0


def test_rouge_order_matters_for_lcs():
    scores = rouge_recall("c b a", "a b c")
    assert scores.rouge1 == 1.0
    assert scores.rougeL == pytest.approx(1 / 3)


@pytest.mark.parametrize("answer", ["", "   "])
def test_rouge_empty_answer_is_zero(answer):
    assert rouge_recall(answer, "Mara lives in Oslo").rouge1 == 0.0


def test_linguistic_score_zero_component_is_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert linguistic_score(10.0, 5.0, 0.0) == 0.0


def test_linguistic_score_missing_input_is_none():
    assert linguistic_score(None, 5.0, 100.0) is None


def test_linguistic_score_huge_perplexity_stays_finite():
    value = linguistic_score(1e300, 5.0, 100.0)
    assert math.isfinite(value)
    assert value < 1e-200


def test_finite_mean_skips_missing_and_non_finite():
    assert finite_mean([1.0, None, float("nan"), float("inf"), 3.0]) == 2.0
    assert finite_mean([None]) is None
