"""The faiss half of an `ItemIndex`: the space its rows are held in, adding and replacing
rows, and search with exact re-ranking.

Spaces (`IndexConfig.spaces`; the sweep tries each factory in each):
- "l2": faiss holds the MIPS-to-L2 transform of the rows (`l2_items`) and searches by L2.
  Item vectors carry a bias column, so their norms differ a lot; IVF clustering by inner
  product on them needed every list opened to reach the target, after the transform about
  half (docs/benchmarks.md, Serving).
- "ip": faiss holds the rows themselves and searches by inner product.

Misplaced rows (`misplaced`): rows the index cannot place right, which `ItemIndex` keeps out
of ANN results and scans exactly on every query: rows longer than a bound a little above
today's longest (`max_norm`: the transform has no room for them, and codebooks clip them),
and rows whose codes reconstruct them worse than OUTLIER_RATIO times the median row does.
Quantiser codebooks are fitted to the bulk of the catalogue, and a small population unlike
it is coded badly: on the serving benchmark's catalogue, the trained products (with their
learned deltas) among a million synthetic ones, which are most users' true top 10.

Search: faiss returns k * k_factor candidates per query, their scores are recomputed from the
caller's float32 matrix by `inner_scores` and the best k kept (`rerank`), so every score
agrees bit for bit with exact search. A factory ending in ",RFlat" names this exact
re-ranking and gets a k_factor calibrated by the sweep; any other gets k_factor 1 (its k
results re-scored only). faiss's own IndexRefineFlat re-ranks the same way, but from a
second copy of the rows, and supports neither add_with_ids nor remove_ids, which
`ItemIndex.update` needs: the matrix the `ItemIndex` already keeps is the flat copy here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from starsrec.index.exact import SCORE_BLOCK, inner_scores
from starsrec.recommender import top_k

REFINE = ",RFlat"
MAX_EF_SEARCH = 4096
NORM_MARGIN = 1.1  # products added later may be a little longer than today's
OUTLIER_RATIO = 4.0  # far above the spread of a catalogue's bulk, far below its outliers'
ERROR_CHUNK = 65_536  # rows encoded and decoded at once when measuring code errors


def max_norm(vectors: np.ndarray) -> float:
    """The norm bound M of the MIPS-to-L2 transform, with room for products added later."""
    return NORM_MARGIN * float(np.sqrt(np.einsum("ij,ij->i", vectors, vectors).max()))


def l2_items(vectors: np.ndarray, norm: float) -> np.ndarray:
    """[x, sqrt(M^2 - |x|^2)]: nearest neighbours of [q, 0] among these are the largest
    inner products <q, x> (Bachrach et al. 2014)."""
    squared = np.maximum(norm**2 - np.einsum("ij,ij->i", vectors, vectors), 0.0)
    return np.hstack([vectors, np.sqrt(squared)[:, None]]).astype(np.float32)


def l2_queries(queries: np.ndarray) -> np.ndarray:
    """[q, 0]: the query side of `l2_items`."""
    return np.hstack([queries, np.zeros((len(queries), 1), np.float32)]).astype(np.float32)


def rerank(
    queries: np.ndarray, found: np.ndarray, matrix: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best k of each query's candidate rows `found` ((Q, C), -1: none), scored exactly
    from `matrix`: ((Q, k) rows, (Q, k) scores) as `top_k` orders them."""
    parts: tuple[list[np.ndarray], list[np.ndarray]] = (
        [np.empty((0, k), np.int64)],
        [np.empty((0, k), np.float32)],
    )
    block = max(1, SCORE_BLOCK // max(1, found.shape[1] * matrix.shape[1]))
    for start in range(0, len(queries), block):
        candidates = found[start : start + block]
        scores = inner_scores(queries[start : start + block], matrix[np.maximum(candidates, 0)])
        scores[candidates < 0] = -np.inf
        for part, out in zip(top_k(scores, k, candidates), parts, strict=True):
            out.append(part)
    return np.concatenate(parts[0]), np.concatenate(parts[1])


@dataclass
class AnnIndex:
    """A faiss index over rows 0..N-1 of an `ItemIndex` and how to search it.

    factory: the faiss factory string with nlist and dim filled in (",RFlat" kept).
    space: "l2" or "ip" (module docstring). breadth: IVF nprobe or HNSW efSearch of an
    unfiltered search. k_factor: candidates per result re-ranked exactly. norm: the bound M
    past which rows are misplaced (and of the "l2" space's transform). error_bound: the code
    error past which rows are misplaced (infinite for exact codes, e.g. IVF-Flat).
    """

    index: faiss.Index
    factory: str
    space: str
    breadth: int = 1
    k_factor: int = 1
    norm: float = 0.0
    error_bound: float = math.inf

    def search(
        self,
        matrix: np.ndarray,
        queries: np.ndarray,
        k: int,
        breadth: int | None = None,
        selector: faiss.IDSelector | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k rows per query among the candidates faiss finds at `breadth` (None: the
        calibrated one) and `selector`, re-ranked exactly from `matrix`, the rows' vectors."""
        depth = max(k, min(k * self.k_factor, self.index.ntotal))
        breadth = self.breadth if breadth is None else breadth
        # faiss's stubs lack SearchParametersHNSW and the keywords its wrapper's constructors take.
        params: faiss.SearchParameters
        if isinstance(self.index, faiss.IndexHNSW):
            ef_search = max(depth, min(breadth, MAX_EF_SEARCH))
            params = faiss.SearchParametersHNSW(efSearch=ef_search)  # type: ignore[attr-defined]
        else:
            assert isinstance(self.index, faiss.IndexIVF)  # the sweep makes no other kind
            nprobe = min(breadth, self.index.nlist)
            params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]
        if selector is not None:
            params.sel = selector
        if self.space == "l2":
            _, found = self.index.search(l2_queries(queries), depth, params=params)
        else:
            _, found = self.index.search(queries, depth, params=params)
        return rerank(queries, found, matrix, k)

    def add(self, vectors: np.ndarray, first_row: int) -> None:
        """Add `vectors` as rows first_row, first_row + 1, ..."""
        held = self._held(vectors)
        if isinstance(self.index, faiss.IndexHNSW):  # ids are insertion order, which is row order
            self.index.add(held)
        else:  # IVF ids are explicit, which lets `replace` remove and re-add rows
            self.index.add_with_ids(held, np.arange(first_row, first_row + len(vectors)))

    def replace(self, rows: np.ndarray, vectors: np.ndarray) -> bool:
        """Give `rows` the new `vectors`; False (nothing changed) where the index cannot
        remove rows (HNSW): the caller must keep the old ones out of results."""
        if isinstance(self.index, faiss.IndexHNSW):
            return False
        self.index.remove_ids(rows)  # type: ignore[arg-type]  # the wrapper takes ids too
        self.index.add_with_ids(self._held(vectors), rows)
        return True

    def misplaced(self, vectors: np.ndarray) -> np.ndarray:
        """(M,) bool: rows the index cannot place right (module docstring)."""
        too_long = np.einsum("ij,ij->i", vectors, vectors) > self.norm**2
        if math.isinf(self.error_bound):
            return too_long
        return too_long | (self.code_errors(vectors) > self.error_bound)

    def code_errors(self, vectors: np.ndarray) -> np.ndarray:
        """(M,) how far each row's code decodes from it, in the index's space; zeros where
        the codes are the rows themselves (IVF-Flat) or faiss cannot decode them alone (HNSW)."""
        if isinstance(self.index, faiss.IndexIVFFlat | faiss.IndexHNSW):
            return np.zeros(len(vectors), np.float32)
        errors = [np.empty(0, np.float32)]
        for start in range(0, len(vectors), ERROR_CHUNK):
            held = self._held(vectors[start : start + ERROR_CHUNK])
            decoded = self.index.sa_decode(self.index.sa_encode(held))
            errors.append(np.linalg.norm(decoded - held, axis=1))
        return np.concatenate(errors)

    def _held(self, vectors: np.ndarray) -> np.ndarray:
        """What faiss holds for `vectors` in this index's space."""
        return l2_items(vectors, self.norm) if self.space == "l2" else vectors
