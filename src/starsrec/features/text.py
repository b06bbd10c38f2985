"""Item text embeddings `e_text(i)` (DESIGN 1.1), cached, and text-derived subclasses (1.4).

- `embed_items`: embeddings for a list of texts, cached on disk keyed by (encoder name, sha256
  of the text), so only new texts are encoded and a rerun costs nothing. `embed_catalogue` does
  the same for a `Catalogue` (and is the way to use `PrecomputedVectors`). A long-running
  caller (the service embedding products) keeps an `EmbeddingCache` open instead of
  re-reading the file each call.
- `derive_subclasses`: k-means over the embeddings for catalogues without a taxonomy.

The encoders themselves are in `starsrec.features.encoders`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from starsrec.data.interactions import Catalogue
from starsrec.features.encoders import PrecomputedVectors, TextEncoder

logger = logging.getLogger(__name__)

_CACHE_FILE = "embeddings.safetensors"
_CACHE_FORMAT = "1"


# --- cached embedding ----------------------------------------------------------------------


def text_key(text: str) -> bytes:
    """The cache key of a text: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def cache_slug(name: str) -> str:
    """A file-system-safe folder name for an encoder name (hash-suffixed when changed)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "encoder"
    if slug != name:
        slug += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return slug


class EmbeddingCache:
    """One safetensors file per encoder, `cache_dir/<encoder name slug>/embeddings.safetensors`:
    `keys` (N, 32) uint8 sha256 of each text, `vectors` (N, dim). Read once when opened;
    `embed_items(..., cache=)` adds to it and rewrites the file atomically. Not thread-safe:
    callers sharing one serialise their calls."""

    def __init__(self, cache_dir: Path, encoder_name: str) -> None:
        self.path = cache_dir / cache_slug(encoder_name) / _CACHE_FILE
        self.encoder_name = encoder_name
        self.keys = np.zeros((0, 32), dtype=np.uint8)
        self.vectors: np.ndarray | None = None
        self.rows: dict[bytes, int] = {}
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        with safe_open(str(self.path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("encoder") != self.encoder_name or meta.get("format") != _CACHE_FORMAT:
                raise ValueError(
                    f"embedding cache {self.path} belongs to encoder {meta.get('encoder')!r} "
                    f"(format {meta.get('format')!r}), not {self.encoder_name!r}; remove it "
                    "or use another cache_dir"
                )
            self.keys, self.vectors = f.get_tensor("keys"), f.get_tensor("vectors")
        self.rows = {key.tobytes(): row for row, key in enumerate(self.keys)}

    def add(self, keys: list[bytes], vectors: np.ndarray) -> None:
        """Add the (len(keys), dim) `vectors` of texts keyed `keys` (in memory)."""
        if self.vectors is not None and vectors.shape[1] != self.vectors.shape[1]:
            raise ValueError(
                f"encoder {self.encoder_name!r} now gives {vectors.shape[1]}-d vectors but "
                f"its cache {self.path} holds {self.vectors.shape[1]}-d ones; give the "
                "encoder another name or remove the cache"
            )
        start = len(self.keys)
        new_keys = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 32)
        self.keys = np.concatenate([self.keys, new_keys])
        self.vectors = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])
        self.rows.update((key, start + i) for i, key in enumerate(keys))

    def save(self) -> None:
        """Write the whole cache to a temporary file, then rename it over the old one."""
        if self.vectors is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".embeddings-", suffix=".tmp")
        os.close(fd)
        try:
            save_file(
                {"keys": self.keys, "vectors": np.ascontiguousarray(self.vectors)},
                tmp,
                metadata={"encoder": self.encoder_name, "format": _CACHE_FORMAT},
            )
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def embed_items(
    texts: Sequence[str] | np.ndarray,
    encoder: TextEncoder | PrecomputedVectors,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    *,
    item_ids: Sequence[str] | np.ndarray | None = None,
    batch_size: int = 256,
    checkpoint_seconds: float = 60.0,
    cache: EmbeddingCache | None = None,
) -> np.ndarray:
    """(N, dim) float32 embeddings of `texts`, in order.

    With a `cache_dir`, vectors are read from and added to
    `cache_dir/<encoder name slug>/embeddings.safetensors`, keyed by sha256 of the text: only
    texts missing from the cache are encoded (each distinct text once, in batches of
    `batch_size`, sorted by length), and the cache is rewritten atomically at the end and every
    `checkpoint_seconds` while encoding. An open `cache` (of this encoder) is used instead of
    opening `cache_dir`. `PrecomputedVectors` need the `item_ids` instead.
    """
    if isinstance(encoder, PrecomputedVectors):
        if item_ids is None:
            raise ValueError("precomputed vectors are keyed by item id: pass item_ids=")
        if len(item_ids) != len(texts):
            raise ValueError(f"{len(item_ids)} item ids for {len(texts)} texts")
        return encoder.lookup(item_ids)
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str: {text!r}")
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    keys = [text_key(t) for t in texts]
    if cache is None and cache_dir is not None:
        cache = EmbeddingCache(Path(cache_dir), encoder.name)
    if cache is not None and cache.encoder_name != encoder.name:
        raise ValueError(f"a cache of encoder {cache.encoder_name!r} given for {encoder.name!r}")
    known = cache.rows if cache is not None else {}
    first_of: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        if key not in known:
            first_of.setdefault(key, i)
    todo = sorted(first_of.values(), key=lambda i: len(texts[i]))
    fresh: dict[bytes, np.ndarray] = {}
    if todo:
        logger.info(
            "embedding %d distinct new texts with %s (%d of %d texts cached)",
            len(todo),
            encoder.name,
            sum(k in known for k in keys),
            len(texts),
        )
        started = last_save = time.perf_counter()
        pending: list[bytes] = []
        pending_vectors: list[np.ndarray] = []
        batches = range(0, len(todo), batch_size)
        for start in tqdm(
            batches, desc=f"embed {encoder.name}", unit="batch", disable=not progress
        ):
            chunk = todo[start : start + batch_size]
            vectors = np.asarray(encoder.encode([texts[i] for i in chunk]), dtype=np.float32)
            if vectors.shape[0] != len(chunk):
                raise ValueError(
                    f"encoder {encoder.name!r} returned {vectors.shape[0]} rows for {len(chunk)}"
                )
            chunk_keys = [keys[i] for i in chunk]
            fresh.update(zip(chunk_keys, vectors, strict=True))
            pending += chunk_keys
            pending_vectors.append(vectors)
            if cache is not None and time.perf_counter() - last_save > checkpoint_seconds:
                cache.add(pending, np.concatenate(pending_vectors))
                cache.save()
                pending, pending_vectors, last_save = [], [], time.perf_counter()
        elapsed = time.perf_counter() - started
        logger.info(
            "embedded %d texts in %.1f s (%.0f items/s)",
            len(todo),
            elapsed,
            len(todo) / max(elapsed, 1e-9),
        )
        if cache is not None and pending:
            cache.add(pending, np.concatenate(pending_vectors))
            cache.save()
    if cache is not None:
        assert cache.vectors is not None  # every key is cached by now
        return cache.vectors[np.array([cache.rows[k] for k in keys])].astype(np.float32)
    return np.stack([fresh[k] for k in keys])


def embed_catalogue(
    catalogue: Catalogue,
    encoder: TextEncoder | PrecomputedVectors,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """(catalogue.size, dim) embeddings of a catalogue's item texts (or precomputed vectors)."""
    return embed_items(catalogue.texts, encoder, cache_dir, progress, item_ids=catalogue.item_ids)


# --- subclasses ----------------------------------------------------------------------------


def derive_subclasses(
    embeddings: np.ndarray,
    n_clusters: int,
    seed: int = 0,
    n_init: int = 3,
    sample_size: int = 20_000,
    threads: int = 1,
) -> np.ndarray:
    """(N,) int32 k-means cluster of each item, for catalogues without a taxonomy.

    Deterministic under `seed`. The centres are fitted on a seeded sample of at most
    `sample_size` rows (all rows when fewer), then every row is assigned to its nearest
    centre; `threads` caps the BLAS/OpenMP threads used. Clusters are numbered by decreasing
    size (ties by the smallest member index), so labels do not depend on k-means' own order.
    When there are fewer distinct vectors than `n_clusters`, that many clusters are made.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-d (N, dim), got shape {x.shape}")
    if not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters must be in 1..{len(x)} (the number of items)")
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= sample_size else x[np.sort(rng.choice(len(x), sample_size, False))]
    distinct = len(np.unique(fit, axis=0))
    if distinct < n_clusters:
        logger.warning(
            "only %d distinct vectors: %d clusters, not %d", distinct, distinct, n_clusters
        )
        n_clusters = distinct
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=100, random_state=seed)
    with threadpool_limits(limits=threads):
        labels = kmeans.fit(fit).predict(x)
    sizes = np.bincount(labels, minlength=n_clusters)
    first = np.full(n_clusters, len(x))
    np.minimum.at(first, labels, np.arange(len(x)))
    order = np.lexsort((first, -sizes))  # new label r = old cluster order[r]
    relabel = np.empty(n_clusters, dtype=np.int32)
    relabel[order] = np.arange(n_clusters, dtype=np.int32)
    return relabel[labels]


def catalogue_groups(
    catalogue: Catalogue, text: np.ndarray, subclasses: int, classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) subclass and (N,) class of every item: the catalogue's own, or, for a catalogue
    without one, k-means clusters of the item texts `text` (`subclasses` / `classes` of
    them). Items the catalogue leaves without a group keep -1."""
    groups = []
    for own, count in ((catalogue.subclass, subclasses), (catalogue.item_class, classes)):
        if (own < 0).all():
            own = derive_subclasses(text, min(count, len(text)), seed)
        groups.append(own.astype(np.int64))
    return groups[0], groups[1]
