"""Attribute tags `t_i` (DESIGN 1.1): a fixed vocabulary and three ways to assign it.

The vocabulary (`tag_vocabulary.json`, package data; pass another file to any tagger) lists
each tag's `name`, `domain` (grocery, gifts, film or all), a short `description` (used by the
zero-shot and LLM taggers) and lexicon `patterns`/`exclude` (regular expressions, matched
case-insensitively as whole words: a tag applies when a pattern matches and no exclude does).

Every tagger is a `TagExtractor`: `vocabulary` (tag names, in column order) and
`extract(texts) -> (N, T)` float32 multi-hot. Backends:

- `LexiconTagger`: deterministic regex matching; the default.
- `ZeroShotTagger`: cosine similarity between the item text embedding and an embedding of
  "a product that is <description>"; at most `max_tags` tags above `threshold`.
- `LLMTagger` (`starsrec.features.llm_tagger`): any OpenAI-compatible
  `POST {base_url}/chat/completions` endpoint. Answers are validated against the vocabulary
  and cached on disk; training never calls it (tags are precomputed into the item table).

`domains` (e.g. `("grocery",)`) restricts any tagger to the tags of those domains plus "all".
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from starsrec.data.interactions import Catalogue
from starsrec.data.topk import top_k
from starsrec.features.encoders import TextEncoder

logger = logging.getLogger(__name__)

DOMAINS = ("grocery", "gifts", "film", "all")
# A domain is kept when its lexicon tags at least this share of the best domain's items.
DOMAIN_SHARE = 0.5


@dataclass(frozen=True)
class Tag:
    """One vocabulary entry: name, description, lexicon patterns and excludes, and domain."""

    name: str
    description: str
    patterns: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    domain: str = "all"


def load_vocabulary(
    path: str | Path | None = None, domains: Sequence[str] | None = None
) -> tuple[Tag, ...]:
    """The tags of a vocabulary file (default: the packaged one), validated.

    `domains` keeps only the tags of those domains and of domain "all".
    """
    if path is None:
        text = (
            resources.files("starsrec.features").joinpath("tag_vocabulary.json").read_text("utf-8")
        )
        where = "tag_vocabulary.json (package data)"
    else:
        text, where = Path(path).read_text("utf-8"), str(path)
    try:
        entries = json.loads(text)["tags"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{where}: expected a JSON object with a `tags` list ({err})") from err
    tags: list[Tag] = []
    for n, entry in enumerate(entries):
        try:
            tag = Tag(
                name=str(entry["name"]),
                description=str(entry["description"]),
                patterns=tuple(entry.get("patterns", ())),
                exclude=tuple(entry.get("exclude", ())),
                domain=str(entry.get("domain", "all")),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"{where}: tag #{n} lacks `name` or `description`") from err
        for pattern in (*tag.patterns, *tag.exclude):
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(
                    f"{where}: tag {tag.name!r}: bad pattern {pattern!r}: {err}"
                ) from err
        tags.append(tag)
    names = [t.name for t in tags]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{where}: duplicated tag names {duplicated}")
    if domains is not None:
        unknown = sorted(set(domains) - {t.domain for t in tags} - set(DOMAINS))
        if unknown:
            raise ValueError(f"unknown tag domains {unknown}; known: {DOMAINS}")
        tags = [t for t in tags if t.domain in domains or t.domain == "all"]
    return tuple(tags)


def vocabulary_fingerprint(tags: Sequence[Tag]) -> str:
    """A short hash of the tag names and descriptions (what a model is asked about)."""
    payload = json.dumps([[t.name, t.description] for t in tags]).encode()
    return hashlib.sha256(payload).hexdigest()[:12]


def tag_names(multi_hot: np.ndarray, vocabulary: Sequence[str]) -> list[tuple[str, ...]]:
    """(N, T) multi-hot -> the tag names of each row."""
    names = np.asarray(vocabulary, dtype=object)
    return [tuple(names[np.flatnonzero(row > 0)]) for row in np.asarray(multi_hot)]


def tagging_text(text: str, places: Sequence[str | None] = ()) -> str:
    """What a tagger reads for one item: its name, then the names of its catalogue places
    (subclass, class) where known, so an aisle called "frozen meals" tags its dumplings
    frozen although their names never say so."""
    return " | ".join([text, *(place for place in places if place)])


def tagging_texts(catalogue: Catalogue) -> list[str]:
    """`tagging_text` of every catalogue item: its name, subclass name and class name."""
    subclasses = (*catalogue.subclass_names, None)  # code -1 reads the None
    classes = (*catalogue.class_names, None)
    codes = zip(catalogue.subclass.tolist(), catalogue.item_class.tolist(), strict=True)
    return [
        tagging_text(text, (subclasses[s], classes[c]))
        for text, (s, c) in zip(catalogue.texts.tolist(), codes, strict=True)
    ]


def detect_domains(
    texts: Sequence[str], vocabulary_path: str | Path | None = None, share: float = DOMAIN_SHARE
) -> tuple[str, ...]:
    """The vocabulary domains a catalogue belongs to, from its item texts: each domain's
    coverage is the share of items its lexicon tags at least once, and the domains kept
    are those with at least `share` of the best domain's coverage (a shop of gifts that
    also sells tea keeps only gifts; a mixed shop keeps both). Domain "all" is implied."""
    tagger = default_tagger() if vocabulary_path is None else LexiconTagger(vocabulary_path)
    return _kept_domains(tagger.extract(texts) if len(texts) else None, tagger.tags, share)


def tag_catalogue(texts: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """The domains `detect_domains` keeps for `texts` and their (N, T) float32 multi-hot
    under `default_tagger(domains)`, from one pass of the full lexicon (tagging a large
    catalogue twice, once to detect and once to tag, doubled the time)."""
    tagger = default_tagger()
    multi_hot = tagger.extract(texts)
    domains = _kept_domains(multi_hot if len(texts) else None, tagger.tags, DOMAIN_SHARE)
    kept = [t.domain in domains or t.domain == "all" for t in tagger.tags]
    return domains, np.ascontiguousarray(multi_hot[:, kept], dtype=np.float32)


def _kept_domains(
    multi_hot: np.ndarray | None, tags: Sequence[Tag], share: float
) -> tuple[str, ...]:
    domains = sorted({t.domain for t in tags} - {"all"})
    if not domains or multi_hot is None:
        return tuple(domains)
    coverage = {
        domain: float((multi_hot[:, [t.domain == domain for t in tags]].sum(axis=1) > 0).mean())
        for domain in domains
    }
    best = max(coverage.values())
    if best == 0:
        return tuple(domains)  # nothing matched: no evidence to restrict by
    kept = tuple(d for d in domains if coverage[d] >= share * best)
    logger.info("tag domains %s (item coverage %s)", kept, coverage)
    return kept


@runtime_checkable
class TagExtractor(Protocol):
    """Texts -> (N, T) float32 multi-hot over `vocabulary` (tag names, column order)."""

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Tag names, in column order."""

    def extract(self, texts: Sequence[str]) -> np.ndarray:
        """(N, T) float32 multi-hot tags of `texts`."""


def _whole_words(patterns: Sequence[str]) -> str:
    return r"(?<![a-z0-9])(?:" + "|".join(f"(?:{p})" for p in patterns) + r")(?![a-z0-9])"


@functools.cache
def default_tagger(domains: tuple[str, ...] | None = None) -> LexiconTagger:
    """The shipped vocabulary's tagger (restricted to `domains` and "all"; None: every
    domain), built once per process and domains: building one loads the vocabulary and
    compiles about 2,000 regexes, which per added product made `PUT /v1/items` slow."""
    return LexiconTagger(domains=domains)


class LexiconTagger:
    """Regex lexicon: a tag applies when one of its patterns matches and no exclude does."""

    def __init__(
        self, vocabulary_path: str | Path | None = None, domains: Sequence[str] | None = None
    ) -> None:
        self.vocabulary_path = vocabulary_path
        self.domains = domains
        self.tags = load_vocabulary(vocabulary_path, domains)
        self._regexes: list[tuple[re.Pattern[str], re.Pattern[str] | None]] | None = None

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Tag names, in column order."""
        return tuple(t.name for t in self.tags)

    def extract(self, texts: Sequence[str]) -> np.ndarray:
        """See `TagExtractor.extract`: the regexes run once per distinct text."""
        unique, inverse = np.unique(np.asarray(list(texts), dtype=str), return_inverse=True)
        out = np.zeros((len(unique), len(self.tags)), dtype=np.float32)
        for column, (match, exclude) in enumerate(self._compiled()):
            for row, text in enumerate(unique.tolist()):
                if match.search(text) and not (exclude and exclude.search(text)):
                    out[row, column] = 1.0
        return out[inverse.reshape(-1)]

    def _compiled(self) -> list[tuple[re.Pattern[str], re.Pattern[str] | None]]:
        if self._regexes is None:
            self._regexes = [
                (
                    re.compile(_whole_words(t.patterns) if t.patterns else r"(?!)", re.IGNORECASE),
                    re.compile(_whole_words(t.exclude), re.IGNORECASE) if t.exclude else None,
                )
                for t in self.tags
            ]
        return self._regexes


class ZeroShotTagger:
    """Tags by cosine similarity of text embeddings to "a product that is <description>"."""

    def __init__(
        self,
        encoder: TextEncoder,
        threshold: float = 0.4,
        max_tags: int = 3,
        vocabulary_path: str | Path | None = None,
        domains: Sequence[str] | None = None,
        template: str = "a product that is {description}",
    ) -> None:
        self.encoder = encoder
        self.threshold = threshold
        self.max_tags = max_tags
        self.vocabulary_path = vocabulary_path
        self.domains = domains
        self.template = template
        self.tags = load_vocabulary(vocabulary_path, domains)
        self._tag_vectors: np.ndarray | None = None

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Tag names, in column order."""
        return tuple(t.name for t in self.tags)

    def tag_vectors(self) -> np.ndarray:
        """(T, dim) embeddings of the tag prompts (computed once)."""
        if self._tag_vectors is None:
            prompts = [self.template.format(description=t.description) for t in self.tags]
            self._tag_vectors = np.asarray(self.encoder.encode(prompts), dtype=np.float32)
        return self._tag_vectors

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, T) cosine similarities of item embeddings (unit rows) to the tag prompts."""
        return np.asarray(embeddings, dtype=np.float32) @ self.tag_vectors().T

    def extract_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Tags of items whose text embeddings (by the same encoder) are already known."""
        scores = self.scores(embeddings)
        out = np.zeros(scores.shape, dtype=np.float32)
        k = min(self.max_tags, scores.shape[1])
        if k == 0 or len(scores) == 0:
            return out
        top, best = top_k(scores, k)  # (N, k) tag columns, best first, ties by lower column
        rows, ranks = np.nonzero(best >= self.threshold)  # -inf pads the rows short of k
        out[rows, top[rows, ranks]] = 1.0
        return out

    def extract(self, texts: Sequence[str]) -> np.ndarray:
        """See `TagExtractor.extract`: encodes `texts`, then tags them by `extract_embeddings`."""
        return self.extract_embeddings(self.encoder.encode(list(texts)))
