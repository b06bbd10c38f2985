"""Maximum-inner-product search over item rows, under stock/scope filters and exclusions.

Serving scores an item by one inner product: the caller hands (N, D) float32 item vectors,
already augmented, and (Q, D) query vectors; `ItemIndex` returns the best k rows (0..N-1)
per query, best first, ties by lower row, among rows an `allowed` bitmap admits and minus
per-query exclusions. Rows are padded with -1 / -inf only when fewer than k rows qualify.

Design:
- The index keeps the full float32 matrix. Catalogues of at most `exact_threshold` rows are
  only ever scanned exactly; larger ones also get the faiss index (IVF or HNSW, in the "l2"
  or "ip" space of `starsrec.index.ann`) that `starsrec.index.sweep` chooses: the fastest
  factory meeting `target_recall` on a sample, built on every row with its breadth (IVF
  nprobe, HNSW efSearch) and k_factor (candidates re-ranked exactly per result) calibrated
  again there.
- A selectivity planner answers filtered queries: an allowed subset of at most
  `exact_subset_rows` rows is scanned exactly (its row list and matrix cached per `scope`
  key); otherwise faiss searches with the filters as C++ selectors (allowed bitmap AND NOT
  the query's exclusions) and a breadth raised by 1/selectivity. A query the ANN leaves with
  fewer than min(k, qualifying rows) results is answered by exact search instead.
- Every returned score is recomputed from the stored matrix by `inner_scores`, whose sum order per
  element does not depend on which rows are scored together (BLAS sgemm's does), so all paths
  agree bit for bit with `exact_search` and merged lists order exactly; the ANN's candidates
  are ranked by these scores too (the matrix is the flat store of its exact re-ranking).
- Stale rows are kept out of ANN results by the selector, scanned exactly and merged in:
  rows the ANN index cannot place right (`starsrec.index.ann`, misplaced: too long, or coded
  badly), and rows updated on HNSW. `add` appends rows to faiss at once. `update` removes
  and re-adds rows on IVF; HNSW cannot remove, so updated rows stay stale. Rebuild when
  many are stale.
- `save`/`load`: index.json, vectors.safetensors and faiss's own index file; never pickle.
  Indexes saved in format 2 (before spaces, k_factor and error_bound) load as "l2" with
  k_factor 1 and no error bound, which is what they were.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np
from safetensors.numpy import load_file, save_file

from starsrec.data.files import FAISS_FILE, INDEX_META_FILE, VECTORS_FILE
from starsrec.data.integrity import reindex_remedy, write_atomic, write_json_atomic
from starsrec.index.ann import AnnIndex
from starsrec.index.config import IndexConfig
from starsrec.index.exact import merge_top_k, scan_top_k
from starsrec.index.subset import Subset, checked_allowed, checked_matrix, checked_rows
from starsrec.index.sweep import build_faiss, format_sweep

__all__ = ["IndexConfig", "ItemIndex", "format_sweep"]  # format_sweep re-exported

logger = logging.getLogger(__name__)

FORMAT = 3  # 2: faiss holds the MIPS-to-L2 transform of the vectors; 3: a space, k_factor...
READABLE_FORMATS = (2, 3)
SCOPE_CACHE_SIZE = 64
_ALL = object()  # scope-cache key of the "every row allowed" subset


class ItemIndex:
    """Top-k inner-product search over rows 0..N-1 under filters (see the module docstring).

    Get one from `build` or `load`; the constructor only stores what they computed.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        config: IndexConfig,
        ann: AnnIndex | None = None,
        sweep: Sequence[dict] = (),
        stale: np.ndarray | None = None,
    ) -> None:
        self.config = config
        self._buffer = vectors  # rows [0, size) are the index; spare rows make `add` cheap
        self._size = len(vectors)
        self._ann = ann
        self._sweep = [dict(record) for record in sweep]
        self._stale = np.zeros(self._size, dtype=bool) if stale is None else stale
        self._scopes: OrderedDict[object, Subset] = OrderedDict()

    # -- building ---------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        config: IndexConfig = IndexConfig(),
        queries: np.ndarray | None = None,
        progress: bool = True,
    ) -> ItemIndex:
        """Index (N, D) float32 `vectors`; `queries` (e.g. user vectors) drive the recall sweep
        of `starsrec.index.sweep`, by default noisy rows of `vectors`."""
        vectors = checked_matrix(vectors, "vectors", copy=True)
        if queries is not None:
            queries = checked_matrix(queries, "queries", vectors.shape[1])
        n = len(vectors)
        if n <= config.exact_threshold:
            logger.info("%d rows <= exact_threshold %d: exact search", n, config.exact_threshold)
            return cls(vectors, config)
        ann, records, misplaced = build_faiss(vectors, queries, config, progress)
        return cls(vectors, config, ann, records, misplaced)

    # -- properties -------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of rows."""
        return self._size

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._buffer.shape[1]

    @property
    def kind(self) -> str:
        """ "exact", or the faiss factory string of the ANN index (nlist and dim filled in)."""
        return "exact" if self._ann is None else self._ann.factory

    @property
    def space(self) -> str:
        """ "exact", or the ANN index's space: "l2" or "ip" (`starsrec.index.ann`)."""
        return "exact" if self._ann is None else self._ann.space

    @property
    def breadth(self) -> int:
        """Unfiltered search breadth: IVF nprobe or HNSW efSearch (0 for exact)."""
        return 0 if self._ann is None else self._ann.breadth

    @property
    def k_factor(self) -> int:
        """ANN candidates re-ranked exactly per result (0 for exact)."""
        return 0 if self._ann is None else self._ann.k_factor

    @property
    def sweep(self) -> list[dict]:
        """One record per factory tried on the sample, then one for the full build."""
        return [dict(record) for record in self._sweep]

    @property
    def vectors(self) -> np.ndarray:
        """(size, dim) the rows' vectors (a view: do not modify; use `update`)."""
        return self._vectors

    @property
    def _vectors(self) -> np.ndarray:
        return self._buffer[: self._size]

    # -- searching --------------------------------------------------------------------
    def plan(self, allowed: np.ndarray | None = None, scope: Hashable | None = None) -> str:
        """ "exact" or "ann": the path `search` takes for this bitmap."""
        return self._plan(self._subset(checked_allowed(allowed, self._size), scope))

    def _plan(self, subset: Subset) -> str:
        exact = self._ann is None or subset.count <= self.config.exact_subset_rows
        return "exact" if exact else "ann"

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        exclude: Sequence[np.ndarray] | None = None,
        scope: Hashable | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k rows per query: ((Q, k) int64 rows, (Q, k) float32 scores), best first,
        ties by lower row, -1 / -inf where fewer than k rows qualify.

        allowed: (N,) bool, None = every row. exclude: per query, rows never to return.
        scope: a hashable name for `allowed` (e.g. ("in-stock", "shoes")) under which the
        planner caches what it derives from that bitmap; a changed bitmap under the same
        name is noticed and replaces the entry.
        """
        queries, exclude = self._check(queries, k, exclude)
        subset = self._subset(checked_allowed(allowed, self._size), scope)
        if self._plan(subset) == "exact":
            return scan_top_k(queries, k, subset.rows, subset.matrix, exclude)
        return self._ann_search(queries, k, subset, exclude)

    def exact_search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        exclude: Sequence[np.ndarray] | None = None,
        scope: Hashable | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The reference for `search` (same arguments and results; `scope` is ignored):
        scores every row, masks disallowed and excluded rows, takes the top k."""
        queries, exclude = self._check(queries, k, exclude)
        return scan_top_k(
            queries, k, None, self._vectors, exclude, checked_allowed(allowed, self._size)
        )

    def _ann_search(
        self, queries: np.ndarray, k: int, subset: Subset, exclude: list[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        ann = self._ann
        assert ann is not None  # _plan takes the ANN path only with a faiss index
        faiss.omp_set_num_threads(self.config.threads)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        searchable = subset.count - len(subset.stale_rows)
        if searchable:
            # A filter keeps `selectivity` of each list / neighbourhood: look that much wider.
            breadth = math.ceil(ann.breadth * ann.index.ntotal / searchable)
            base = None
            if subset.ann_bitmap is not None:  # faiss's wrapper takes it alone; stubs: (n, ptr)
                base = faiss.IDSelectorBitmap(subset.ann_bitmap)  # type: ignore[call-arg,arg-type]
            if exclude is None:
                rows, scores = ann.search(self._vectors, queries, k, breadth, base)
            for q, banned in enumerate(exclude or ()):
                selector: faiss.IDSelector | None = base
                if banned.size:
                    # Locals keep these alive during the search: And / Not do not own their parts.
                    batch = faiss.IDSelectorBatch(banned)
                    negated = faiss.IDSelectorNot(batch)
                    selector = negated if base is None else faiss.IDSelectorAnd(base, negated)
                one = queries[q : q + 1]
                rows[q : q + 1], scores[q : q + 1] = ann.search(
                    self._vectors, one, k, breadth, selector
                )
        if subset.stale_rows.size:  # misplaced rows, or rows updated on HNSW: exactly
            matrix = self._vectors[subset.stale_rows]
            stale = scan_top_k(queries, k, subset.stale_rows, matrix, exclude)
            rows, scores = merge_top_k((rows, scores), stale, k)
        available = np.full(len(queries), subset.count)
        for q, banned in enumerate(exclude or ()):
            banned = np.unique(banned)
            available[q] -= banned.size if subset.allowed is None else subset.allowed[banned].sum()
        short = np.flatnonzero((rows >= 0).sum(axis=1) < np.minimum(k, available))
        if short.size:  # rare: the ANN ran out of candidates (large k, heavy exclusions)
            logger.debug("%d of %d queries short of results: exact search", short.size, len(rows))
            excluded = None if exclude is None else [exclude[q] for q in short]
            rows[short], scores[short] = scan_top_k(
                queries[short], k, None, self._vectors, excluded, subset.allowed
            )
        return rows, scores

    def _subset(self, allowed: np.ndarray | None, scope: Hashable | None) -> Subset:
        key = _ALL if allowed is None else scope
        if key is None:
            return Subset(allowed, self._vectors, self._stale)
        if not isinstance(key, Hashable):
            raise ValueError(f"scope must be hashable (a str or tuple), got {type(key).__name__}")
        cached = self._scopes.get(key)
        stored = None if cached is None else cached.allowed  # a scope's bitmap, or None: all
        same = allowed is None or (stored is not None and np.array_equal(stored, allowed))
        if cached is None or not same:
            # A copy: callers may edit their bitmap in place and reuse the scope name.
            cached = Subset(None if allowed is None else allowed.copy(), self._vectors, self._stale)
            self._scopes[key] = cached
            if len(self._scopes) > SCOPE_CACHE_SIZE:
                self._scopes.popitem(last=False)
        self._scopes.move_to_end(key)
        return cached

    # -- changing ---------------------------------------------------------------------
    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append (M, D) vectors as new rows, searchable at once; returns their row ids."""
        vectors = checked_matrix(vectors, "vectors", self.dim)
        start, end = self._size, self._size + len(vectors)
        if end > len(self._buffer):  # grow by a quarter so repeated adds stay amortised O(1)
            grown = np.empty((max(end, len(self._buffer) * 5 // 4), self.dim), dtype=np.float32)
            grown[:start] = self._vectors
            self._buffer = grown
        self._buffer[start:end] = vectors
        misplaced = np.zeros(len(vectors), dtype=bool)
        if self._ann is not None:
            faiss.omp_set_num_threads(self.config.threads)
            self._ann.add(vectors, start)
            misplaced = self._ann.misplaced(vectors)
        self._stale = np.concatenate([self._stale, misplaced])
        self._warn_if_many_stale()
        self._size = end
        self._scopes.clear()
        return np.arange(start, end, dtype=np.int64)

    def update(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the vectors of `rows` (unique row ids) with (len(rows), D) `vectors`."""
        rows = checked_rows(rows, self._size, "rows")
        vectors = checked_matrix(vectors, "vectors", self.dim)
        if len(np.unique(rows)) != len(rows) or len(vectors) != len(rows):
            raise ValueError(
                f"update needs unique rows and one vector per row, got {len(rows)} rows "
                f"({len(np.unique(rows))} unique) and {len(vectors)} vectors"
            )
        if self._ann is not None:
            faiss.omp_set_num_threads(self.config.threads)
            replaced = self._ann.replace(rows, vectors)  # HNSW keeps the old ones: stale
            self._stale[rows] = self._ann.misplaced(vectors) if replaced else True
            self._warn_if_many_stale()
        self._vectors[rows] = vectors
        self._scopes.clear()

    def _warn_if_many_stale(self) -> None:
        if self._stale.sum() > self.config.exact_subset_rows:
            logger.warning(
                "%d rows are scanned exactly on every query (updated on HNSW, or misplaced: "
                "see starsrec.index.ann): rebuild the index",
                self._stale.sum(),
            )

    # -- persistence ------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write vectors.safetensors, (for ANN kinds) faiss.index, then index.json, each
        atomically."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {"vectors": self._vectors, "stale": self._stale.astype(np.uint8)}
        write_atomic(out / VECTORS_FILE, lambda temporary: save_file(state, str(temporary)))
        ann = self._ann
        if ann is not None:
            write_atomic(
                out / FAISS_FILE, lambda temporary: faiss.write_index(ann.index, str(temporary))
            )
        meta = {
            "format": FORMAT,
            "config": asdict(self.config),
            "kind": self.kind,
            "space": self.space,
            "breadth": self.breadth,
            "k_factor": self.k_factor,
            "norm": 0.0 if ann is None else ann.norm,
            "error_bound": None if ann is None or math.isinf(ann.error_bound) else ann.error_bound,
            "sweep": self._sweep,
        }
        write_json_atomic(out / INDEX_META_FILE, meta)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> ItemIndex:
        """The index `save` wrote into `directory`."""
        path = Path(directory)
        if not (path / INDEX_META_FILE).is_file():
            raise ValueError(
                f"{path} holds no ItemIndex ({INDEX_META_FILE} missing): use save() first"
            )
        meta = json.loads((path / INDEX_META_FILE).read_text())
        if meta.get("format") not in READABLE_FORMATS:
            raise ValueError(
                f"{path}: index format {meta.get('format')}, expected {FORMAT}: "
                f"{reindex_remedy('ARTIFACT_DIR')}"
            )
        fields = meta["config"]  # JSON arrays back to tuples; format 2 had no spaces
        lists = {key: tuple(fields[key]) for key in ("factories", "spaces") if key in fields}
        config = IndexConfig(**{**fields, **lists})
        state = load_file(str(path / VECTORS_FILE))
        vectors = np.require(state["vectors"], np.float32, ["C", "W"])
        ann = None
        if meta["kind"] != "exact":
            index = faiss.read_index(str(path / FAISS_FILE))
            space, k_factor = meta.get("space", "l2"), meta.get("k_factor", 1)  # format 2: l2, 1
            bound = meta.get("error_bound")  # None: no bound (always, in format 2)
            bound = math.inf if bound is None else bound
            ann = AnnIndex(
                index, meta["kind"], space, meta["breadth"], k_factor, meta["norm"], bound
            )
        faiss.omp_set_num_threads(config.threads)
        return cls(vectors, config, ann, meta["sweep"], state["stale"].astype(bool))

    # -- validation -------------------------------------------------------------------
    def _check(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        queries = checked_matrix(queries, "queries", self.dim)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if exclude is None:
            return queries, None
        if len(exclude) != len(queries):
            raise ValueError(
                f"exclude has {len(exclude)} entries for {len(queries)} queries: give one "
                "array of rows per query (an empty one for none)"
            )
        return queries, [checked_rows(rows, self._size, "exclude") for rows in exclude]
