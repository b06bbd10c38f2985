"""`LLMTagger`: attribute tags from any OpenAI-compatible chat endpoint (DESIGN 1.1).

Answers are validated against the vocabulary (`starsrec.features.tags`) and cached on disk;
training never calls it (tags are precomputed into the item table).
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from starsrec.features.tags import load_vocabulary, vocabulary_fingerprint
from starsrec.features.text import cache_slug

logger = logging.getLogger(__name__)


class TaggingError(RuntimeError):
    """The LLM endpoint could not be reached or gave unusable answers."""


_SYSTEM_PROMPT = (
    "You label catalogue items with attribute tags. Use only tags from the given vocabulary, "
    "only when they clearly apply; an item may have no tag. Answer with JSON only."
)


class LLMTagger:
    """Tags from any OpenAI-compatible chat endpoint, validated and cached.

    Items are sent `batch_size` at a time; the model must answer
    `{"items": [{"id": 0, "tags": ["organic", ...]}, ...]}` with one entry per item. Tags
    outside the vocabulary are dropped (counted in a WARNING); a malformed answer is retried
    once, then raises `TaggingError`. Answers are cached in
    `cache_dir/<model slug>/<vocabulary fingerprint>.jsonl`, keyed by sha256 of the text, so a
    text is never asked about twice. Uses only the standard library (`urllib.request`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        cache_dir: str | Path | None = None,
        timeout: float = 30,
        batch_size: int = 20,
        vocabulary_path: str | Path | None = None,
        domains: Sequence[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.api_key = api_key
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.batch_size = batch_size
        self.vocabulary_path = vocabulary_path
        self.domains = domains
        self.progress = progress
        self.tags = load_vocabulary(vocabulary_path, domains)
        self.requests_made = 0
        self._answers: dict[str, tuple[str, ...]] | None = None

    def __repr__(self) -> str:  # never shows the api key
        return f"LLMTagger(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Tag names, in column order."""
        return tuple(t.name for t in self.tags)

    @property
    def cache_path(self) -> Path | None:
        """The answer cache, `cache_dir/<model slug>/<vocabulary fingerprint>.jsonl`; None without
        a `cache_dir`."""
        if self.cache_dir is None:
            return None
        name = f"{vocabulary_fingerprint(self.tags)}.jsonl"
        return Path(self.cache_dir) / cache_slug(self.model) / name

    def _cached(self) -> dict[str, tuple[str, ...]]:
        if self._answers is None:
            self._answers = {}
            path = self.cache_path
            if path is not None and path.exists():
                for line in path.read_text("utf-8").splitlines():
                    try:  # a torn last line (interrupted write) is skipped
                        record = json.loads(line)
                        self._answers[record["key"]] = tuple(record["tags"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue
        return self._answers

    def extract(self, texts: Sequence[str]) -> np.ndarray:
        """See `TagExtractor.extract`: cached answers, the endpoint asked only about new texts."""
        texts = list(texts)
        keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        answers = self._cached()
        todo: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in answers:
                todo.setdefault(key, text)
        dropped: Counter[str] = Counter()
        pending = list(todo.items())
        batches = range(0, len(pending), self.batch_size)
        for start in tqdm(batches, desc=f"tag {self.model}", disable=not self.progress):
            batch = pending[start : start + self.batch_size]
            tags = self._ask([text for _, text in batch], dropped)
            new = {key: tuple(t) for (key, _), t in zip(batch, tags, strict=True)}
            answers.update(new)
            self._append(new)
        if dropped:
            logger.warning(
                "dropped %d tags outside the vocabulary from %s's answers: %s",
                sum(dropped.values()),
                self.model,
                ", ".join(f"{tag!r} ({n})" for tag, n in dropped.most_common(5)),
            )
        column = {name: j for j, name in enumerate(self.vocabulary)}
        out = np.zeros((len(texts), len(column)), dtype=np.float32)
        for row, key in enumerate(keys):
            for tag in answers[key]:
                if tag in column:  # cached answers may predate a domain filter
                    out[row, column[tag]] = 1.0
        return out

    def _append(self, answers: dict[str, tuple[str, ...]]) -> None:
        path = self.cache_path
        if path is None or not answers:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(
            json.dumps({"key": key, "tags": list(tags)}) + "\n" for key, tags in answers.items()
        )
        with path.open("a", encoding="utf-8") as f:
            f.write(lines)

    def _prompt(self, texts: Sequence[str]) -> list[dict[str, str]]:
        vocabulary = "\n".join(f"- {t.name}: {t.description}" for t in self.tags)
        items = json.dumps([{"id": i, "text": t} for i, t in enumerate(texts)], ensure_ascii=False)
        user = (
            f"Vocabulary (tag: meaning):\n{vocabulary}\n\n"
            "For each item, list the vocabulary tags that clearly apply. Answer with one JSON "
            'object {"items": [{"id": <item id>, "tags": [<tag>, ...]}, ...]} with exactly '
            "one entry per item id.\n\nITEMS:\n" + items
        )
        return [{"role": "system", "content": _SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def _ask(self, texts: Sequence[str], dropped: Counter[str]) -> list[list[str]]:
        messages = self._prompt(texts)
        problem = ""
        for _attempt in range(2):
            content = self._post(messages)
            unknown: Counter[str] = Counter()
            try:
                tags = self._parse(content, len(texts), unknown)
            except ValueError as err:
                problem = f"{err}; the answer began {content[:200]!r}"
                logger.info("malformed answer from %s (%s), asking again", self.model, err)
                continue
            dropped.update(unknown)  # counted only for answers that are used
            return tags
        raise TaggingError(
            f"{self.model} at {self.base_url} answered malformed JSON twice: {problem}"
        )

    def _post(self, messages: list[dict[str, str]]) -> str:
        url = self.base_url.rstrip("/") + "/chat/completions"
        body = {"model": self.model, "messages": messages, "temperature": 0}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        self.requests_made += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply: Any = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:300]
            raise TaggingError(f"{url} answered HTTP {err.code}: {detail}") from err
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise TaggingError(f"cannot reach {url}: {err}") from err
        except json.JSONDecodeError as err:
            raise TaggingError(f"{url} did not answer JSON: {err}") from err
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as err:
            raise TaggingError(f"{url} answered without choices[0].message.content") from err

    def _parse(self, content: str, n_items: int, dropped: Counter[str]) -> list[list[str]]:
        """The tags of each item from a model answer; ValueError when malformed."""
        start, end = content.find("{"), content.rfind("}")  # tolerate ```json fences, prose
        if start < 0 or end < start:
            raise ValueError("no JSON object")
        try:
            entries = json.loads(content[start : end + 1])["items"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"not a JSON object with an `items` list ({err})") from err
        if not isinstance(entries, list):
            raise ValueError("`items` is not a list")
        known = {name.lower(): name for name in self.vocabulary}
        result: dict[int, list[str]] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("tags"), list):
                raise ValueError(f"entry {entry!r} lacks a `tags` list")
            try:
                item = int(entry["id"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"entry {entry!r} lacks an integer `id`") from err
            tags = [str(t).strip() for t in entry["tags"]]
            dropped.update(t for t in tags if t.lower() not in known)
            result[item] = sorted({known[t.lower()] for t in tags if t.lower() in known})
        missing = [i for i in range(n_items) if i not in result]
        if missing:
            raise ValueError(f"no entry for item ids {missing[:5]}")
        return [result[i] for i in range(n_items)]
