"""Choosing and building the faiss index of an `ItemIndex` larger than `exact_threshold` rows.

The choice rule (`build_faiss`; the fields named are `IndexConfig`'s):
1. On a sample of `sweep_rows` rows (every row when there are no more), build each of
   `factories` and raise its breadth (IVF nprobe through the powers of two, HNSW efSearch
   through EF_SEARCH) until recall@10 against exact search on the sweep queries reaches
   `target_recall`, timing the queries at `threads` as serving runs them.
2. Drop the factories whose full build, projected from the sample build as n log n, would take
   longer than `max_build_s`, unless that drops them all. Of the rest, the fastest per query
   that meets the target wins; if none does, the one with the best recall, with a warning.
3. Build the winner on every row (nlist recomputed for them) and calibrate its breadth again
   there on the first CALIBRATION_QUERIES queries: the breadth a sample needs does not carry
   over to the full index. A catalogue that fits in the sample keeps the sweep's index.

Every factory is built over L2 on the MIPS-to-L2 transform of the rows (`l2_items`): item
vectors carry a bias column, so their norms differ a lot, and IVF clustering by inner product
on them needed every list opened to reach the target here; after the transform it needs about
half (see docs/benchmarks.md, Serving).

Sweep queries are the caller's (e.g. user vectors), at most `sweep_queries` of them, or rows of
the catalogue plus small gaussian noise. Each factory tried and the full build leave a record
(SWEEP_COLUMNS), which the index keeps and `format_sweep` prints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import faiss
import numpy as np
from tqdm import tqdm

from starsrec.recommender import top_k

if TYPE_CHECKING:  # for annotations only: starsrec.index.item_index imports this module
    from starsrec.index.config import IndexConfig

logger = logging.getLogger(__name__)

RECALL_AT = 10
CALIBRATION_QUERIES = 300
MIN_POINTS_PER_LIST = 39  # faiss k-means warns with fewer training points per centroid
TRAIN_POINTS_PER_LIST = 64  # plenty for IVF centroids; faiss's 256 makes 1M-row training 4x slower
ADD_CHUNK = 65_536
NORM_MARGIN = 1.1  # products added later may be a little longer than today's
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
TRUTH_BLOCK = 1 << 24  # scores held at once when finding the true top rows (64 MiB of float32)
# Read before anything changes it, so OMP_NUM_THREADS caps the threads used for building.
_HOST_THREADS = max(1, faiss.omp_get_max_threads())
SWEEP_COLUMNS = (
    "stage",
    "factory",
    "rows",
    "build_s",
    "breadth",
    "recall",
    "query_ms",
    "projected_build_s",
)


def max_norm(vectors: np.ndarray) -> float:
    """The norm bound M of the MIPS-to-L2 transform, with room for products added later."""
    return NORM_MARGIN * float(np.sqrt(np.einsum("ij,ij->i", vectors, vectors).max()))


def l2_items(vectors: np.ndarray, norm: float) -> np.ndarray:
    """[x, sqrt(M^2 - |x|^2)]: nearest neighbours of [q, 0] among these are the largest
    inner products <q, x> (Bachrach et al. 2014). IVF clusters and HNSW graphs built on
    inner products of non-normalised vectors lose recall badly here: item vectors carry a
    bias column, so norms differ a lot; in L2 after the transform they do not."""
    squared = np.maximum(norm**2 - np.einsum("ij,ij->i", vectors, vectors), 0.0)
    return np.hstack([vectors, np.sqrt(squared)[:, None]]).astype(np.float32)


def l2_queries(queries: np.ndarray) -> np.ndarray:
    """[q, 0]: the query side of `l2_items`."""
    return np.hstack([queries, np.zeros((len(queries), 1), np.float32)]).astype(np.float32)


def build_faiss(
    vectors: np.ndarray, queries: np.ndarray | None, config: IndexConfig, progress: bool
) -> tuple[faiss.Index, str, int, list[dict], float]:
    """(index, factory with nlist filled in, breadth, sweep records, norm bound M) for
    validated (N, D) float32 `vectors` and sweep `queries` (None: the default ones); the
    faiss index holds `l2_items(vectors, M)`. See the module docstring."""
    n = len(vectors)
    norm = max_norm(vectors)
    rng = np.random.default_rng(config.seed)
    queries = _sweep_queries(vectors, queries, config.sweep_queries, rng)
    faiss.omp_set_num_threads(_HOST_THREADS)  # building may use every core
    try:
        sample = None
        if n > config.sweep_rows:
            sample = np.sort(rng.choice(n, config.sweep_rows, replace=False))
        records, template, index, breadth = _sweep(
            vectors if sample is None else vectors[sample], queries, config, n, norm
        )
        factory = template.format(nlist=_nlist(n))
        if sample is not None:  # else the sweep's index already holds every row
            index, seconds = _new_faiss(factory, vectors, norm, config.seed, progress)
            queries = queries[:CALIBRATION_QUERIES]
            truth = _exact_top(vectors, queries, RECALL_AT)
            breadth, recall, query_ms = _calibrate(index, queries, truth, config)
            records.append(_record("full", factory, n, seconds, breadth, recall, query_ms))
            if recall < config.target_recall:
                logger.warning("%s reaches only recall %.4f on all rows", factory, recall)
            logger.info(
                "built %s on %d rows in %.1f s (%.0f rows/s)", factory, n, seconds, n / seconds
            )
    finally:
        faiss.omp_set_num_threads(config.threads)
    logger.info("index sweep:\n%s", format_sweep(records))
    return index, factory, breadth, records, norm


def add_rows(index: faiss.Index, vectors: np.ndarray, first_row: int, norm: float) -> None:
    """Add `vectors` to `index` as rows first_row, first_row + 1, ... (transformed)."""
    vectors = l2_items(vectors, norm)
    if isinstance(index, faiss.IndexHNSW):  # ids are insertion order, which is row order
        index.add(vectors)
    else:  # IVF ids are explicit, which lets `ItemIndex.update` remove and re-add rows
        index.add_with_ids(vectors, np.arange(first_row, first_row + len(vectors)))


def _search_params(index: faiss.Index, breadth: int) -> faiss.SearchParameters:
    """Search parameters of breadth `breadth`: efSearch for HNSW, nprobe for IVF."""
    # faiss's stubs lack SearchParametersHNSW, and the keyword arguments that faiss's Python
    # wrapper gives every SearchParameters constructor.
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=breadth)  # type: ignore[attr-defined]
    return faiss.SearchParametersIVF(nprobe=breadth)  # type: ignore[call-arg]


def format_sweep(records: Sequence[dict]) -> str:
    """The sweep records as a text table (for logs and reports)."""
    cells = [SWEEP_COLUMNS, *([str(r.get(c, "")) for c in SWEEP_COLUMNS] for r in records)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(SWEEP_COLUMNS))]
    lines = ("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(lines)


def _sweep_queries(
    vectors: np.ndarray, queries: np.ndarray | None, count: int, rng: np.random.Generator
) -> np.ndarray:
    """At most `count` of the caller's validated `queries`, or `count` noisy catalogue rows."""
    if queries is None:
        picks = rng.choice(len(vectors), min(len(vectors), count), replace=False)
        # Near the items but not on them, so no factory is rewarded for finding duplicates.
        noise = rng.normal(
            scale=0.1 * float(vectors[picks].std()), size=(len(picks), vectors.shape[1])
        )
        return (vectors[picks] + noise).astype(np.float32)
    if len(queries) == 0:
        raise ValueError("build got an empty queries array: pass None for default sweep queries")
    if len(queries) > count:
        queries = queries[rng.choice(len(queries), count, replace=False)]
    return queries


def _sweep(
    sample: np.ndarray, queries: np.ndarray, config: IndexConfig, full_rows: int, norm: float
):
    """(records, winning factory template, its index on the sample, its breadth)."""
    nlist, n = _nlist(len(sample)), len(sample)
    truth = _exact_top(sample, queries, RECALL_AT)
    growth = full_rows / n * math.log(max(full_rows, 2)) / math.log(max(n, 2))
    records, built = [], {}
    for template in config.factories:
        index, seconds = _new_faiss(template.format(nlist=nlist), sample, norm, config.seed, False)
        measured = _calibrate(index, queries, truth, config)
        record = _record("sample", template.format(nlist=nlist), n, seconds, *measured)
        records.append({**record, "projected_build_s": round(seconds * growth, 1)})
        built[template] = (index, measured[0])
    sampled = dict(zip(config.factories, records, strict=True))
    fits = {t: r for t, r in sampled.items() if r["projected_build_s"] <= config.max_build_s}
    fits = fits or sampled
    meeting = {t: r for t, r in fits.items() if r["recall"] >= config.target_recall}
    if meeting:
        best = min(meeting, key=lambda t: meeting[t]["query_ms"])
    else:
        best = max(fits, key=lambda t: fits[t]["recall"])
        factory, recall = fits[best]["factory"], fits[best]["recall"]
        logger.warning("no factory reached the target recall; best: %s at %.4f", factory, recall)
    return records, best, *built[best]


def _calibrate(index, queries: np.ndarray, truth: np.ndarray, config: IndexConfig):
    """(breadth, recall@10, ms per query): the smallest breadth reaching target_recall."""
    breadths: Sequence[int]
    if isinstance(index, faiss.IndexHNSW):
        breadths = EF_SEARCH
    else:
        breadths = [2**i for i in range(index.nlist.bit_length()) if 2**i < index.nlist]
        breadths = [*breadths, index.nlist]
    queries = l2_queries(queries)
    faiss.omp_set_num_threads(config.threads)  # time queries as serving runs them
    try:
        for breadth in breadths:
            start = time.perf_counter()
            _, found = index.search(queries, truth.shape[1], params=_search_params(index, breadth))
            seconds = time.perf_counter() - start
            hits = sum(np.intersect1d(f, t).size for f, t in zip(found, truth, strict=True))
            recall = hits / truth.size
            if recall >= config.target_recall:
                break
    finally:
        faiss.omp_set_num_threads(_HOST_THREADS)
    return breadth, recall, 1000 * seconds / len(queries)


def _new_faiss(factory: str, vectors: np.ndarray, norm: float, seed: int, progress: bool):
    """(index, seconds): `factory` trained and filled with `vectors` as ids 0..N-1, in the
    L2 space of `l2_items`."""
    start = time.perf_counter()
    try:
        index = faiss.index_factory(vectors.shape[1] + 1, factory, faiss.METRIC_L2)
    except RuntimeError as error:
        raise ValueError(
            f"faiss cannot build {factory!r} ({error}): fix IndexConfig.factories"
        ) from error
    if not isinstance(index, faiss.IndexIVF | faiss.IndexHNSW):
        raise ValueError(f"unsupported factory {factory!r}: use an IVF... or HNSW... string")
    if isinstance(index, faiss.IndexIVF):
        train, limit = vectors, TRAIN_POINTS_PER_LIST * index.nlist
        if len(vectors) > limit:
            train = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), limit, False))]
        index.train(l2_items(train, norm))
    with tqdm(total=len(vectors), unit="rows", desc=factory, disable=not progress) as bar:
        for first in range(0, len(vectors), ADD_CHUNK):
            add_rows(index, vectors[first : first + ADD_CHUNK], first, norm)
            bar.update(min(ADD_CHUNK, len(vectors) - first))
    return index, time.perf_counter() - start


def _nlist(rows: int) -> int:
    """About 4 sqrt(rows) inverted lists, at most one per MIN_POINTS_PER_LIST rows."""
    return max(1, min(round(4 * math.sqrt(rows)), rows // MIN_POINTS_PER_LIST))


def _exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) true top rows for measuring recall (scores by BLAS, in blocks)."""
    k = min(k, len(vectors))
    block = max(1, TRUTH_BLOCK // len(vectors))
    parts = [top_k(queries[s : s + block] @ vectors.T, k)[0] for s in range(0, len(queries), block)]
    return np.concatenate(parts)


def _record(stage: str, factory: str, rows: int, build_s: float, *measured) -> dict:
    breadth, recall, query_ms = measured
    values = stage, factory, rows, round(build_s, 3), breadth, round(recall, 4), round(query_ms, 4)
    return dict(zip(SWEEP_COLUMNS, values, strict=False))
