"""Choosing and building the faiss index of an `ItemIndex` larger than `exact_threshold` rows.

The choice rule (`build_faiss`; the fields named are `IndexConfig`'s):
1. On a sample of `sweep_rows` rows (every row when there are no more), build each of
   `factories` in each of `spaces` (`starsrec.index.ann`) and calibrate its search breadth
   (below) until recall@10 against exact search on the sweep queries reaches
   `target_recall`, timing the queries one at a time at `threads`, as serving runs them
   (its misplaced rows, `starsrec.index.ann`, kept out of the ANN and scanned exactly).
   Recall is the ANN's own, on the rows it holds (`_measurer` says why).
2. Drop the candidates whose full build, projected from the sample build as n log n, would
   take longer than `max_build_s`, unless that drops them all. Of the rest, the fastest per
   query on all rows that meets the target wins; if none does, the one with the best
   recall, with a warning. A query's time on all rows is projected from the sample's as the
   rows it scans at the same breadth (`_projected_query_ms`): every row's code for a fixed
   list count (IVF1, a flat scan), rows / nlist per list for `{nlist}` (lists grow as
   sqrt(rows)), log(rows) for HNSW. On the sample alone a flat fast-scan and an IVF tie
   (0.42 and 0.39 ms at 100,000 rows), while on 1M rows the flat one scans 10x more and the
   IVF about 3x: the sample's fastest could be the slowest on the catalogue.
3. Build the winner on every row (nlist recomputed for them) and calibrate it again there
   on the first CALIBRATION_QUERIES queries: the breadth a sample needs does not carry over
   to the full index. A catalogue that fits in the sample keeps the sweep's index.

Breadth has two parts, each the smallest on its ladder that meets the target:
- `breadth`: how far faiss looks: IVF nprobe through the powers of two up to nlist, HNSW
  efSearch through EF_SEARCH.
- `k_factor`: how many candidates per result are re-ranked exactly (`ann.rerank`): through
  K_FACTORS for factories ending in ",RFlat", 1 for the rest. Breadth is calibrated first,
  at the largest k_factor (so it covers the true top rows and quantisation error does not
  count against it), then k_factor at that breadth, by bisection: recall cannot fall as
  k_factor grows, since the candidates of a larger one include those of a smaller.

Factory strings may hold `{nlist}` (about 4 sqrt(rows) inverted lists) and `{dim}` (the
dimension in the space: one more in "l2"), e.g. "IVF1,PQ{dim}x4fs,RFlat": 4-bit fast-scan
PQ codes, one subquantiser per dimension, all in one inverted list (an IVF wrapper keeps
faiss's selector support, which the flat fast-scan indexes lack), re-ranked exactly.

Sweep queries are the caller's (e.g. user vectors), at most `sweep_queries` of them, or rows of
the catalogue plus small gaussian noise. Each candidate tried and the full build leave a
record (SWEEP_COLUMNS), which the index keeps and `format_sweep` prints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import faiss
import numpy as np
from tqdm import tqdm

from starsrec.index.ann import OUTLIER_RATIO, REFINE, AnnIndex, l2_items, max_norm
from starsrec.index.exact import merge_top_k, scan_top_k
from starsrec.recommender import top_k

if TYPE_CHECKING:  # for annotations only: starsrec.index.item_index imports this module
    from starsrec.index.config import IndexConfig

logger = logging.getLogger(__name__)

RECALL_AT = 10
CALIBRATION_QUERIES = 300
MIN_POINTS_PER_LIST = 39  # faiss k-means warns with fewer training points per centroid
TRAIN_POINTS_PER_LIST = 64  # plenty for IVF centroids; faiss's 256 makes 1M-row training 4x slower
MIN_TRAIN_POINTS = 65_536  # codebooks (PQ, SQ) need them even where there are few lists
ADD_CHUNK = 65_536
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
K_FACTORS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TRUTH_BLOCK = 1 << 24  # scores held at once when finding the true top rows (64 MiB of float32)
# Read before anything changes it, so OMP_NUM_THREADS caps the threads used for building.
_HOST_THREADS = max(1, faiss.omp_get_max_threads())
SWEEP_COLUMNS = (
    "stage",
    "factory",
    "space",
    "rows",
    "build_s",
    "breadth",
    "k_factor",
    "misplaced",
    "recall",
    "query_ms",
    "projected_query_ms",
    "projected_build_s",
)


def build_faiss(
    vectors: np.ndarray, queries: np.ndarray | None, config: IndexConfig, progress: bool
) -> tuple[AnnIndex, list[dict], np.ndarray]:
    """(index, sweep records, (N,) bool misplaced rows) for validated (N, D) float32
    `vectors` and sweep `queries` (None: the default ones). See the module docstring."""
    n = len(vectors)
    rng = np.random.default_rng(config.seed)
    queries = _sweep_queries(vectors, queries, config.sweep_queries, rng)
    faiss.omp_set_num_threads(_HOST_THREADS)  # building may use every core
    try:
        sample = None
        if n > config.sweep_rows:
            sample = np.sort(rng.choice(n, config.sweep_rows, replace=False))
        records, (template, space), (ann, misplaced) = _sweep(
            vectors if sample is None else vectors[sample], queries, config, n, max_norm(vectors)
        )
        if sample is not None:  # else the sweep's index already holds every row
            ann, misplaced, seconds = _new_faiss(
                template, space, vectors, ann.norm, config.seed, progress
            )
            queries = queries[:CALIBRATION_QUERIES]
            recall, query_ms = _calibrate(ann, vectors, misplaced, queries, config)
            records.append(_record("full", ann, n, seconds, recall, query_ms, misplaced.sum()))
            if recall < config.target_recall:
                logger.warning("%s reaches only recall %.4f on all rows", ann.factory, recall)
            logger.info(
                "built %s (%s) on %d rows in %.1f s (%.0f rows/s)",
                ann.factory,
                space,
                n,
                seconds,
                n / seconds,
            )
    finally:
        faiss.omp_set_num_threads(config.threads)
    logger.info("index sweep:\n%s", format_sweep(records))
    return ann, records, misplaced


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
) -> tuple[list[dict], tuple[str, str], tuple[AnnIndex, np.ndarray]]:
    """(records, the winning (factory template, space), its index on the sample and
    misplaced rows)."""
    n = len(sample)
    growth = full_rows / n * math.log(max(full_rows, 2)) / math.log(max(n, 2))
    records, built = {}, {}
    for candidate in ((t, s) for t in config.factories for s in config.spaces):
        ann, misplaced, seconds = _new_faiss(*candidate, sample, norm, config.seed, False)
        measured = _calibrate(ann, sample, misplaced, queries, config)
        record = _record("sample", ann, n, seconds, *measured, misplaced.sum())
        projected = _projected_query_ms(candidate[0], record["query_ms"], n, full_rows)
        records[candidate] = {
            **record,
            "projected_query_ms": round(projected, 4),
            "projected_build_s": round(seconds * growth, 1),
        }
        built[candidate] = ann, misplaced
    fits = {c: r for c, r in records.items() if r["projected_build_s"] <= config.max_build_s}
    fits = fits or records
    meeting = {c: r for c, r in fits.items() if r["recall"] >= config.target_recall}
    if meeting:
        best = min(meeting, key=lambda c: meeting[c]["projected_query_ms"])
    else:
        best = max(fits, key=lambda c: fits[c]["recall"])
        factory, recall = fits[best]["factory"], fits[best]["recall"]
        logger.warning("no factory reached the target recall; best: %s at %.4f", factory, recall)
    return list(records.values()), best, built[best]


def _calibrate(
    ann: AnnIndex,
    matrix: np.ndarray,
    misplaced: np.ndarray,
    queries: np.ndarray,
    config: IndexConfig,
) -> tuple[float, float]:
    """Set `ann`'s breadth and k_factor (module docstring) on the rows `matrix`, of which
    `misplaced` are scanned exactly; (recall@10, ms per query) at them."""
    measure = _measurer(ann, matrix, misplaced, queries)
    if isinstance(ann.index, faiss.IndexHNSW):
        breadths: Sequence[int] = EF_SEARCH
    else:
        assert isinstance(ann.index, faiss.IndexIVF)  # _new_faiss makes no other kind
        nlist = ann.index.nlist
        breadths = [*(2**i for i in range(nlist.bit_length()) if 2**i < nlist), nlist]
    k_factors = K_FACTORS if ann.factory.endswith(REFINE) else (1,)
    faiss.omp_set_num_threads(config.threads)  # time queries as serving runs them
    try:
        ann.k_factor = k_factors[-1]
        for breadth in breadths:
            ann.breadth = breadth
            recall, query_ms = measure()
            if recall >= config.target_recall:
                break
        best = len(k_factors) - 1, recall, query_ms  # the widest, measured above
        if recall >= config.target_recall:
            # Bisect for the least k_factor meeting the target: recall cannot fall as it grows.
            low, high = 0, best[0]
            while low < high:
                middle = (low + high) // 2
                ann.k_factor = k_factors[middle]
                measured = measure()
                if measured[0] >= config.target_recall:
                    high, best = middle, (middle, *measured)
                else:
                    low = middle + 1
        position, recall, query_ms = best
        ann.k_factor = k_factors[position]
    finally:
        faiss.omp_set_num_threads(_HOST_THREADS)
    return recall, query_ms


def _measurer(
    ann: AnnIndex, matrix: np.ndarray, misplaced: np.ndarray, queries: np.ndarray
) -> Callable[[], tuple[float, float]]:
    """A function measuring (recall@10, ms per query) of `ann` at its breadth and k_factor,
    one query at a time. Time: of the search `ItemIndex.search` runs, misplaced rows kept
    out by a selector, scanned exactly and merged in. Recall: of the ANN alone, against the
    true top rows among those it holds. The exactly scanned rows would hide its misses: on
    the serving benchmark they are most users' top 10, and a filter leaves few of them."""
    truth = _exact_top(matrix, queries, RECALL_AT, misplaced)
    exact = np.flatnonzero(misplaced)
    selector = None
    if exact.size:  # faiss's wrapper takes the packed bitmap alone; stubs: (n, ptr)
        bitmap = np.packbits(~misplaced, bitorder="little")
        selector = faiss.IDSelectorBitmap(bitmap)  # type: ignore[call-arg,arg-type]

    def measure() -> tuple[float, float]:
        found = np.empty_like(truth)
        start = time.perf_counter()
        for q in range(len(queries)):
            query = queries[q : q + 1]
            top = ann.search(matrix, query, truth.shape[1], None, selector)
            found[q] = top[0][0]
            if exact.size:
                merge_top_k(
                    top, scan_top_k(query, RECALL_AT, exact, matrix[exact], None), RECALL_AT
                )
        seconds = time.perf_counter() - start
        hits = sum(np.intersect1d(f, t).size for f, t in zip(found, truth, strict=True))
        return hits / truth.size, 1000 * seconds / len(queries)

    return measure


def _new_faiss(
    template: str, space: str, vectors: np.ndarray, norm: float, seed: int, progress: bool
) -> tuple[AnnIndex, np.ndarray, float]:
    """(index, (N,) bool misplaced rows, seconds): `template` in `space`, trained and filled
    with `vectors` as rows 0..N-1, nlist and dim filled in for N rows, its error bound set
    from the rows' code errors (`starsrec.index.ann`)."""
    start = time.perf_counter()
    dim = vectors.shape[1] + (space == "l2")
    factory = template.format(nlist=_nlist(len(vectors)), dim=dim)
    try:
        metric = faiss.METRIC_L2 if space == "l2" else faiss.METRIC_INNER_PRODUCT
        index = faiss.index_factory(dim, factory.removesuffix(REFINE), metric)
    except RuntimeError as error:
        raise ValueError(
            f"faiss cannot build {factory!r} ({error}): fix IndexConfig.factories"
        ) from error
    if not isinstance(index, faiss.IndexIVF | faiss.IndexHNSW):
        raise ValueError(
            f"unsupported factory {factory!r}: use an IVF... or HNSW... string (a flat "
            "fast-scan index as IVF1,...: faiss rejects selectors on the flat ones)"
        )
    ann = AnnIndex(index, factory, space, norm=norm)
    if isinstance(index, faiss.IndexIVF):
        train, limit = vectors, max(TRAIN_POINTS_PER_LIST * index.nlist, MIN_TRAIN_POINTS)
        if len(vectors) > limit:
            train = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), limit, False))]
        index.train(l2_items(train, norm) if space == "l2" else train)
    with tqdm(total=len(vectors), unit="rows", desc=factory, disable=not progress) as bar:
        for first in range(0, len(vectors), ADD_CHUNK):
            ann.add(vectors[first : first + ADD_CHUNK], first)
            bar.update(min(ADD_CHUNK, len(vectors) - first))
    errors = ann.code_errors(vectors)
    typical = float(np.median(errors))
    if typical > 0:  # else the codes are exact (IVF-Flat) or faiss cannot tell (HNSW)
        ann.error_bound = OUTLIER_RATIO * typical
    # None is too long: `norm` bounds every row given here.
    return ann, errors > ann.error_bound, time.perf_counter() - start


def _projected_query_ms(template: str, query_ms: float, rows: int, full_rows: int) -> float:
    """A query's time on `full_rows` rows from its time on a `rows`-row sample at the same
    breadth: in proportion to the rows it scans (see the module doc)."""
    if template.startswith("HNSW"):
        return query_ms * math.log(max(full_rows, 2)) / math.log(max(rows, 2))
    scanned = full_rows / rows
    if "{nlist}" in template:
        scanned *= _nlist(rows) / _nlist(full_rows)
    return query_ms * scanned


def _nlist(rows: int) -> int:
    """About 4 sqrt(rows) inverted lists, at most one per MIN_POINTS_PER_LIST rows."""
    return max(1, min(round(4 * math.sqrt(rows)), rows // MIN_POINTS_PER_LIST))


def _exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, skip: np.ndarray) -> np.ndarray:
    """(Q, k) true top rows among those not in `skip` (scores by BLAS, in blocks)."""
    k = min(k, len(vectors) - int(skip.sum()))
    block = max(1, TRUTH_BLOCK // len(vectors))
    parts = []
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ vectors.T
        scores[:, skip] = -np.inf
        parts.append(top_k(scores, k)[0])
    return np.concatenate(parts)


def _record(
    stage: str, ann: AnnIndex, rows: int, build_s: float, recall, query_ms, misplaced
) -> dict:
    values = (
        stage,
        ann.factory,
        ann.space,
        rows,
        round(build_s, 3),
        ann.breadth,
        ann.k_factor,
        int(misplaced),
        round(recall, 4),
        round(query_ms, 4),
    )
    return dict(zip(SWEEP_COLUMNS, values, strict=False))
