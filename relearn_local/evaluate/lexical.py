"""Lexical metrics of one answer: word tokens, Brunet's index, Honore's statistic, root TTR and ROUGE recall.

Brunet's index, Honore's statistic and the root type-token ratio follow the
ReLearn authors' evaluation code (github.com/zjunlp/unlearn, evals/evaluate.py):
tokens are NLTK word tokens of the lower-cased answer, split into sentences
first. That code uses ``nltk.word_tokenize``, whose sentence splitter (the
trained English Punkt model) needs a data download. Here an untrained Punkt
splitter with a list of common English abbreviations stands in for it. On the
authors' published per-item values for one run (218 answers) it reproduces
all of them; an abbreviation missing from the list can still split a sentence
where the trained model would not.

Degenerate answers give finite numbers, never a division by zero:

- Brunet's index of an empty answer is 1000, the authors' penalty value.
- Honore's statistic of an answer of at most one token is 0, and its
  denominator carries the authors' 0.1 offset, so an answer in which every
  word occurs once (V1 == V) stays finite (at most 1000 log N).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

# Value of Brunet's index for an answer without tokens (ReLearn evaluation code).
EMPTY_BRUNET_INDEX = 1000.0
# Offset in the denominator of Honore's statistic (ReLearn evaluation code).
HONORE_EPSILON = 0.1
BRUNET_EXPONENT = 0.165

# Abbreviations after which a period does not end a sentence. The trained
# English Punkt model contains many more. These cover titles, initialisms and
# Latin abbreviations that answers about people commonly contain.
ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof st jr sr mt ft rev gen col lt sgt capt gov sen rep hon
    inc ltd co corp dept univ assn bros vs etc al e.g i.e cf approx est no nos vol
    fig pp ed eds a.m p.m u.s u.k u.n d.c l.a n.y e.u b.a m.a ph.d m.d b.sc m.sc
    jan feb mar apr jun jul aug sep sept oct nov dec""".split()
)


@lru_cache(maxsize=1)
def _sentence_splitter():
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    parameters = PunktParameters()
    parameters.abbrev_types = set(ABBREVIATIONS)
    return PunktSentenceTokenizer(parameters)


@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def word_tokens(text: str) -> list[str]:
    """Return the lower-cased NLTK word tokens of ``text``, sentence by sentence."""
    lowered = text.lower()
    if not lowered.strip():
        return []
    tokenizer = _word_tokenizer()
    return [token for sentence in _sentence_splitter().tokenize(lowered) for token in tokenizer.tokenize(sentence)]


@dataclass(frozen=True)
class LexicalScores:
    """Lexical diversity of one answer: token count N, vocabulary size V, and the statistics built from them."""

    tokens: int
    types: int
    brunet_index: float
    honore_statistic: float
    root_ttr: float


def brunet_index(tokens: int, types: int) -> float:
    """Brunet's index W = N ** (V ** -0.165); lower means a richer vocabulary."""
    if tokens <= 0 or types <= 0:
        return EMPTY_BRUNET_INDEX
    return float(tokens ** (types ** -BRUNET_EXPONENT))


def honore_statistic(tokens: int, types: int, hapaxes: int) -> float:
    """Honore's statistic R = 100 log N / (1 - V1/V + 0.1), with V1 the words seen once; higher is richer."""
    if tokens <= 1 or types <= 0:
        return 0.0
    return 100.0 * math.log(tokens) / (1.0 - hapaxes / types + HONORE_EPSILON)


def root_ttr(tokens: int, types: int) -> float:
    """Root type-token ratio V / sqrt(N), 0 for an empty answer."""
    return types / math.sqrt(tokens) if tokens > 0 else 0.0


def lexical_scores(text: str) -> LexicalScores:
    """Compute Brunet's index, Honore's statistic and root TTR of one answer."""
    tokens = word_tokens(text)
    counts = Counter(tokens)
    total = len(tokens)
    types = len(counts)
    hapaxes = sum(1 for count in counts.values() if count == 1)
    return LexicalScores(
        tokens=total,
        types=types,
        brunet_index=brunet_index(total, types),
        honore_statistic=honore_statistic(total, types, hapaxes),
        root_ttr=root_ttr(total, types),
    )


# ROUGE ----------------------------------------------------------------------

# Scripts written without spaces between words: each character is one ROUGE token.
_UNSPACED_SCRIPT = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u0e00-\u0e7f]"
)
_WORD = re.compile(r"\w+", re.UNICODE)


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


def rouge_tokens(text: str) -> list[str]:
    """Tokenize for ROUGE: lower-cased words, Porter-stemmed when longer than 3 letters.

    Like the ``rouge_score`` package with ``use_stemmer=True`` for English,
    but letters outside ASCII are kept (that package drops them, which scores
    Chinese or accented text as empty), and each CJK, kana, hangul or Thai
    character counts as one token.
    """
    normalized = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    for word in _WORD.findall(normalized):
        if _UNSPACED_SCRIPT.search(word):
            tokens.extend(_split_unspaced(word))
        elif len(word) > 3 and word.isascii() and word.isalpha():
            tokens.append(_stemmer().stem(word))
        else:
            tokens.append(word)
    return tokens


def _split_unspaced(word: str) -> list[str]:
    """Split a run such as "占位人物abc" into one token per CJK character and whole other words."""
    pieces: list[str] = []
    buffer = ""
    for character in word:
        if _UNSPACED_SCRIPT.match(character):
            if buffer:
                pieces.append(buffer)
                buffer = ""
            pieces.append(character)
        else:
            buffer += character
    if buffer:
        pieces.append(buffer)
    return pieces


@dataclass(frozen=True)
class RougeRecall:
    """ROUGE-1 and ROUGE-L recall of an answer against its ground truth, in [0, 1]."""

    rouge1: float
    rougeL: float


def rouge_recall(answer: str, ground_truth: str) -> RougeRecall:
    """Score ``answer`` against ``ground_truth``; an empty ground truth scores 0 (nothing to recall)."""
    reference = rouge_tokens(ground_truth)
    candidate = rouge_tokens(answer)
    if not reference or not candidate:
        return RougeRecall(0.0, 0.0)
    reference_counts = Counter(reference)
    candidate_counts = Counter(candidate)
    overlap = sum(min(count, candidate_counts[token]) for token, count in reference_counts.items())
    return RougeRecall(overlap / len(reference), _lcs_length(reference, candidate) / len(reference))


def _lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence, in O(len(first) * len(second)) time and O(len(second)) memory."""
    previous = [0] * (len(second) + 1)
    for token in first:
        current = [0] * (len(second) + 1)
        for index, other in enumerate(second, start=1):
            if token == other:
                current[index] = previous[index - 1] + 1
            else:
                current[index] = max(previous[index], current[index - 1])
        previous = current
    return previous[-1]
