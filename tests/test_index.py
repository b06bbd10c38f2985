"""ItemIndex: recall parity with exact search, filters never violated (property test), add /
update on every kind (re-ranked quantised ones included), save/load (format 2 too), input
validation, and the build's sweep records.

Data are small gaussian clusters; tiny configs force the faiss path on 20k rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starsrec.index.config import IndexConfig
from starsrec.index.exact import merge_top_k
from starsrec.index.item_index import ItemIndex, format_sweep
from starsrec.index.sweep import _projected_query_ms

DIM = 16
FAISS_CONFIG = IndexConfig(
    exact_threshold=1000, sweep_rows=5000, sweep_queries=200, exact_subset_rows=500
)
SMALL = dict(exact_threshold=1000, sweep_rows=2000, sweep_queries=100, exact_subset_rows=100)
KINDS = {
    "exact": IndexConfig(),
    "ivf-flat": IndexConfig(factories=("IVF{nlist},Flat",), spaces=("l2",), **SMALL),
    "ivf-sq8": IndexConfig(factories=("IVF{nlist},SQ8",), spaces=("l2",), **SMALL),
    "hnsw": IndexConfig(factories=("HNSW32,Flat",), spaces=("l2",), **SMALL),
    # 4-bit fast-scan codes in one inverted list, re-ranked exactly; by inner product or L2.
    "pq4fs-ip": IndexConfig(factories=("IVF1,PQ{dim}x4fs,RFlat",), spaces=("ip",), **SMALL),
    "pq4fs-l2": IndexConfig(factories=("IVF1,PQ{dim}x4fs,RFlat",), spaces=("l2",), **SMALL),
    "rabitq-ip": IndexConfig(factories=("IVF1,RaBitQfs,RFlat",), spaces=("ip",), **SMALL),
}
RERANKED = ["pq4fs-ip", "pq4fs-l2", "rabitq-ip"]


def clustered(n: int, seed: int, clusters: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).normal(size=(clusters, DIM)) * 2.0
    return (centers[rng.integers(clusters, size=n)] + rng.normal(size=(n, DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(20_000, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered(200, seed=1)


@pytest.fixture(scope="module")
def ann(vectors: np.ndarray) -> ItemIndex:
    return ItemIndex.build(vectors, FAISS_CONFIG, progress=False)


@pytest.fixture(scope="module")
def exact(vectors: np.ndarray) -> ItemIndex:
    return ItemIndex.build(vectors, IndexConfig(), progress=False)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(np.intersect1d(f[f >= 0], t[t >= 0]).size for f, t in zip(found, truth, strict=True))
    return hits / max(1, (truth >= 0).sum())


def bitmap(size: int, fraction: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(size) < fraction


# --- build -------------------------------------------------------------------------------


def test_build_chooses_a_kind_and_records_the_sweep(ann: ItemIndex, exact: ItemIndex) -> None:
    assert exact.kind == "exact" and exact.breadth == 0 and exact.sweep == []
    assert ann.kind != "exact" and ann.breadth >= 1 and ann.size == 20_000 and ann.dim == DIM
    sampled = [r for r in ann.sweep if r["stage"] == "sample"]
    assert [(r["factory"], r["space"]) for r in sampled] == [
        ("IVF1,PQ16x4fs,RFlat", "ip"),
        ("IVF1,PQ17x4fs,RFlat", "l2"),
        ("IVF128,Flat", "ip"),
        ("IVF128,Flat", "l2"),
    ]
    for record in ann.sweep:
        assert {"factory", "rows", "build_s", "breadth", "recall", "query_ms"} <= set(record)
    full = ann.sweep[-1]
    assert full["stage"] == "full" and full["factory"] == ann.kind and full["rows"] == 20_000
    assert full["breadth"] == ann.breadth and full["recall"] >= FAISS_CONFIG.target_recall
    # The winner: the fastest on all rows, as projected from the sample, of those meeting
    # the target recall there.
    meeting = [r for r in sampled if r["recall"] >= FAISS_CONFIG.target_recall]
    winner = min(meeting, key=lambda r: r["projected_query_ms"])
    assert (winner["factory"].split(",")[0] == "IVF1") == ann.kind.startswith("IVF1,")
    assert winner["space"] == ann.space
    logging.getLogger(__name__).info("sweep:\n%s", format_sweep(ann.sweep))


def test_query_time_is_projected_from_the_sample_by_the_rows_a_query_scans() -> None:
    """A flat fast-scan scans every row's code; an IVF with about 4 sqrt(rows) lists scans
    rows / nlist per list at the same nprobe; HNSW grows as log(rows)."""
    flat = _projected_query_ms("IVF1,PQ{dim}x4fs,RFlat", 0.42, 100_000, 1_000_000)
    ivf = _projected_query_ms("IVF{nlist},Flat", 0.39, 100_000, 1_000_000)
    hnsw = _projected_query_ms("HNSW32,Flat", 0.5, 100_000, 1_000_000)
    assert flat == pytest.approx(4.2)
    assert ivf == pytest.approx(0.39 * 10 * 1265 / 4000)
    assert hnsw == pytest.approx(0.5 * 6 / 5)
    assert _projected_query_ms("IVF{nlist},Flat", 0.39, 1000, 1000) == 0.39


def test_sweep_tries_every_factory_in_every_space() -> None:
    factories = ("IVF{nlist},Flat", "IVF1,PQ{dim}x4fs,RFlat")
    config = IndexConfig(factories=factories, spaces=("l2", "ip"), **SMALL)
    index = ItemIndex.build(clustered(4000, seed=17), config, progress=False)
    sampled = [(r["factory"], r["space"]) for r in index.sweep if r["stage"] == "sample"]
    assert sampled == [
        ("IVF51,Flat", "l2"),
        ("IVF51,Flat", "ip"),
        ("IVF1,PQ17x4fs,RFlat", "l2"),  # {dim}: one more in the l2 space
        ("IVF1,PQ16x4fs,RFlat", "ip"),
    ]
    flat = [r["k_factor"] for r in index.sweep if r["factory"] == "IVF51,Flat"]
    assert flat == [1, 1]  # only ,RFlat factories re-rank beyond k
    full = index.sweep[-1]
    assert (full["factory"], full["space"]) == (index.kind, index.space)
    assert full["k_factor"] == index.k_factor and full["breadth"] == index.breadth


def test_catalogue_within_the_sweep_sample_reuses_the_sweep_index() -> None:
    config = IndexConfig(
        factories=("IVF{nlist},Flat",), spaces=("l2",), exact_threshold=1000, sweep_rows=5000
    )
    users = clustered(600, seed=14)  # caller-given sweep queries, subsampled to sweep_queries
    index = ItemIndex.build(clustered(3000, seed=5), config, queries=users, progress=False)
    assert index.kind == "IVF76,Flat" and [r["stage"] for r in index.sweep] == ["sample"]


# --- parity with exact search ------------------------------------------------------------


@pytest.mark.parametrize(("fraction", "path"), [(None, "ann"), (0.1, "ann"), (0.01, "exact")])
def test_recall_against_exact_search(
    ann: ItemIndex, queries: np.ndarray, fraction: float | None, path: str
) -> None:
    allowed = None if fraction is None else bitmap(ann.size, fraction, seed=2)
    assert ann.plan(allowed) == path
    rows, scores = ann.search(queries, 10, allowed)
    truth, truth_scores = ann.exact_search(queries, 10, allowed)
    assert recall(rows, truth) >= 0.99
    # Every path scores a row identically, so shared rows carry bit-identical scores.
    for q in range(len(queries)):
        _, mine, theirs = np.intersect1d(rows[q], truth[q], return_indices=True)
        assert np.array_equal(scores[q, mine], truth_scores[q, theirs])


def test_ann_path_at_ten_percent_with_exclusions(ann: ItemIndex, queries: np.ndarray) -> None:
    allowed = bitmap(ann.size, 0.1, seed=3)
    top, _ = ann.exact_search(queries, 3, allowed)
    exclude = [row[:2] for row in top]  # the two best allowed rows of each query
    rows, _ = ann.search(queries, 10, allowed, exclude)
    truth, _ = ann.exact_search(queries, 10, allowed, exclude)
    assert ann.plan(allowed) == "ann" and recall(rows, truth) >= 0.99
    assert not any(
        np.isin(found, banned).any() for found, banned in zip(rows, exclude, strict=True)
    )


def test_queries_the_ann_leaves_short_are_answered_exactly(
    ann: ItemIndex, queries: np.ndarray
) -> None:
    # k = 3000 is more than the probed lists hold: those queries fall back to exact search.
    exclude = [np.arange(50)] * 3
    rows, scores = ann.search(queries[:3], 3000, exclude=exclude)
    truth, truth_scores = ann.exact_search(queries[:3], 3000, exclude=exclude)
    assert np.array_equal(rows, truth) and np.array_equal(scores, truth_scores)


@pytest.mark.parametrize("name", RERANKED)
def test_reranked_kinds_match_exact_search_under_filters_and_exclusions(
    name: str, queries: np.ndarray
) -> None:
    index = ItemIndex.build(clustered(5000, seed=15), KINDS[name], progress=False)
    assert index.kind.endswith(",RFlat") and index.space == KINDS[name].spaces[0]
    assert index.k_factor >= 1 and index.sweep[-1]["recall"] >= KINDS[name].target_recall
    allowed = bitmap(index.size, 0.1, seed=16)
    best = [row[:2] for row in index.exact_search(queries, 2, allowed)[0]]
    anywhere = [np.arange(q, 5000, 97) for q in range(len(queries))]
    for mask, exclude in [(None, None), (allowed, None), (allowed, best), (None, anywhere)]:
        assert index.plan(mask) == "ann"
        rows, scores = index.search(queries, 10, mask, exclude)
        truth, truth_scores = index.exact_search(queries, 10, mask, exclude)
        assert recall(rows, truth) >= 0.99
        if mask is not None:
            assert mask[rows[rows >= 0]].all()
        for q in range(len(queries)):
            assert exclude is None or not np.isin(rows[q], exclude[q]).any()
            _, mine, theirs = np.intersect1d(rows[q], truth[q], return_indices=True)
            assert np.array_equal(scores[q, mine], truth_scores[q, theirs])


# --- filters are never violated ----------------------------------------------------------

FILTERS = dict(
    seed=st.integers(0, 2**32 - 1),
    fraction=st.sampled_from([None, 0.0, 0.0003, 0.004, 0.02, 0.1, 0.6, 1.0]),
    k=st.integers(1, 40),
    n_queries=st.integers(1, 4),
    max_exclude=st.sampled_from([None, 0, 5, 60]),
)


def check_filters(index: ItemIndex, seed, fraction, k, n_queries, max_exclude) -> None:
    rng = np.random.default_rng(seed)
    allowed = None if fraction is None else rng.random(index.size) < fraction
    mask = np.ones(index.size, bool) if allowed is None else allowed
    queries = rng.normal(scale=3.0, size=(n_queries, DIM)).astype(np.float32)
    exclude = None
    if max_exclude is not None:  # half from the allowed rows, so exclusions bite
        pool = np.flatnonzero(mask) if mask.any() else np.arange(index.size)
        sizes = rng.integers(0, max_exclude + 1, size=(n_queries, 2))
        exclude = [
            np.concatenate([rng.choice(pool, a), rng.integers(0, index.size, b)]) for a, b in sizes
        ]
    rows, scores = index.search(queries, k, allowed, exclude)
    assert rows.shape == scores.shape == (n_queries, k)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    for q in range(n_queries):
        valid = rows[q] >= 0
        found = rows[q, valid]
        banned = np.zeros(index.size, bool)
        if exclude is not None:
            banned[exclude[q]] = True
        available = int((mask & ~banned).sum())
        assert valid.sum() == min(k, available)  # pads only when rows run out
        assert valid[: valid.sum()].all()  # padding only at the end
        assert mask[found].all() and not banned[found].any()
        assert len(np.unique(found)) == len(found)
        assert np.all(np.diff(scores[q, valid]) <= 0)
        assert np.all(scores[q, ~valid] == -np.inf)
    if index.plan(allowed) == "exact":
        truth = index.exact_search(queries, k, allowed, exclude)
        assert np.array_equal(rows, truth[0]) and np.array_equal(scores, truth[1])


@settings(max_examples=30, deadline=None)
@given(**FILTERS)
def test_filters_never_violated_exact_kind(exact: ItemIndex, **case) -> None:
    check_filters(exact, **case)


@settings(max_examples=40, deadline=None)
@given(**FILTERS)
def test_filters_never_violated_faiss_kind(ann: ItemIndex, **case) -> None:
    check_filters(ann, **case)


def test_ties_go_to_the_lower_row() -> None:
    vectors = clustered(2000, seed=7)
    vectors[[1500, 40, 900]] = vectors[5] * 50  # three identical best rows
    query = vectors[5:6]
    for config in (IndexConfig(), KINDS["ivf-flat"], KINDS["pq4fs-ip"]):
        index = ItemIndex.build(vectors, config, progress=False)
        rows, scores = index.search(query, 3)
        assert rows[0].tolist() == [40, 900, 1500] and scores[0, 0] == scores[0, 2]
        assert index.search(query, 2, exclude=[np.array([40])])[0][0].tolist() == [900, 1500]


def test_merge_keeps_best_first_and_ties_by_lower_row() -> None:
    first = np.array([[7, 2, -1]]), np.array([[5.0, 1.0, -np.inf]], np.float32)
    second = np.array([[3, 9, 4]]), np.array([[5.0, 2.0, 1.0]], np.float32)
    rows, scores = merge_top_k(first, second, 4)
    assert rows.tolist() == [[3, 7, 9, 2]] and scores.tolist() == [[5.0, 5.0, 2.0, 1.0]]


def test_k_beyond_the_allowed_rows_pads(exact: ItemIndex, queries: np.ndarray) -> None:
    allowed = np.zeros(exact.size, bool)
    allowed[[3, 10]] = True
    rows, scores = exact.search(queries[:2], 5, allowed)
    assert (np.sort(rows[:, :2], axis=1) == [3, 10]).all() and (rows[:, 2:] == -1).all()
    assert np.isneginf(scores[:, 2:]).all()


def test_scope_cache_follows_bitmap_changes_and_adds(queries: np.ndarray) -> None:
    index = ItemIndex.build(clustered(3000, seed=8), KINDS["exact"], progress=False)
    allowed = bitmap(index.size, 0.05, seed=9)
    first = index.search(queries, 5, allowed, scope="shoes")
    assert np.array_equal(first[0], index.search(queries, 5, allowed, scope="shoes")[0])
    allowed[first[0][:, 0]] = False  # edited in place, same scope name
    second = index.search(queries, 5, allowed, scope="shoes")
    assert np.array_equal(second[0], index.exact_search(queries, 5, allowed)[0])
    new = index.add(queries[:1] * 100)
    widened = np.append(allowed, True)
    assert index.search(queries[:1], 1, widened, scope="shoes")[0][0, 0] == new[0]


# --- add, update, save, load -------------------------------------------------------------


@pytest.mark.parametrize("name", list(KINDS))
def test_add_update_save_load(name: str, queries: np.ndarray, tmp_path: Path) -> None:
    index = ItemIndex.build(clustered(4000, seed=4), KINDS[name], progress=False)
    assert (index.kind == "exact") == (name == "exact")
    query, other = queries[:1], queries[1:2]
    rows = index.add(np.concatenate([query * 3, clustered(10, seed=6)]))
    assert rows.tolist() == list(range(4000, 4011)) and index.size == 4011
    assert index.search(query, 1)[0][0, 0] == 4000  # searchable at once
    old_best = index.search(other, 1)[0][0, 0]
    index.update(np.array([17, old_best]), np.concatenate([other * 3, -other * 3]))
    rows, _ = index.search(other, 10)
    assert rows[0, 0] == 17 and old_best not in rows[0]  # moved in, moved out
    assert index.search(query, 1, exclude=[np.array([4000])])[0][0, 0] != 4000
    probe = clustered(50, seed=11)
    allowed = bitmap(index.size, 0.5, seed=12)
    exclude = [np.arange(q, q + 30) for q in range(50)]
    before = index.search(probe, 10, allowed, exclude)
    assert recall(before[0], index.exact_search(probe, 10, allowed, exclude)[0]) >= 0.97
    loaded = ItemIndex.load(index.save(tmp_path / name))
    assert loaded.kind == index.kind and loaded.sweep == index.sweep
    after = loaded.search(probe, 10, allowed, exclude)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert np.array_equal(loaded.search(other, 10)[0], rows)


@pytest.mark.parametrize("name", ["ivf-flat", "hnsw", "pq4fs-ip"])
def test_products_longer_than_the_norm_bound_are_still_found(name: str) -> None:
    """The L2 transform only places rows up to its norm bound, and quantiser codebooks clip
    longer ones; rows past it added later are scanned exactly, so a much longer product still
    wins the queries it should."""
    index = ItemIndex.build(clustered(4000, seed=4), KINDS[name], progress=False)
    probe = clustered(20, seed=14)
    longest = np.linalg.norm(index.vectors, axis=1).max()
    direction = probe[:1] / np.linalg.norm(probe[:1])
    (row,) = index.add(direction * longest * 10)
    assert index.search(probe[:1], 1)[0][0, 0] == row
    index.update(np.array([5]), direction * longest * 20)
    rows, _ = index.search(probe[:1], 2)
    assert rows[0].tolist() == [5, row]
    assert np.array_equal(rows, index.exact_search(probe[:1], 2)[0])


def test_rows_the_codes_fit_badly_are_scanned_exactly() -> None:
    """Codebooks fit the bulk of a catalogue, so a small population unlike it (here rows
    along one axis, within the norm bound) is coded badly: such rows are kept out of the ANN
    and scanned exactly, at build and when added later, so queries they win still find them."""
    bulk = clustered(5000, seed=18)
    longest = np.linalg.norm(bulk, axis=1).max()
    odd = 0.9 * longest * np.eye(DIM, dtype=np.float32)[np.arange(40) % DIM]
    index = ItemIndex.build(np.concatenate([bulk, odd]), KINDS["pq4fs-ip"], progress=False)
    assert 30 <= index.sweep[-1]["misplaced"] <= 100  # most: a few may get a centroid each
    axes = np.eye(DIM, dtype=np.float32)
    assert np.array_equal(index.search(axes, 2)[0], index.exact_search(axes, 2)[0])
    (row,) = index.add(-0.8 * longest * axes[:1])
    index.update(np.array([7]), -0.85 * longest * axes[1:2])
    rows, scores = index.search(-axes[:2], 1)
    assert rows[:, 0].tolist() == [row, 7]
    assert np.array_equal(scores, index.exact_search(-axes[:2], 1)[1])


def test_save_load_round_trip_of_the_faiss_index(
    ann: ItemIndex, queries: np.ndarray, tmp_path: Path
) -> None:
    loaded = ItemIndex.load(ann.save(tmp_path / "index"))
    assert (loaded.kind, loaded.breadth, loaded.config) == (ann.kind, ann.breadth, ann.config)
    allowed = bitmap(ann.size, 0.2, seed=13)
    for args in [(None, None), (allowed, None), (allowed, [np.array([1, 2])] * len(queries))]:
        before, after = ann.search(queries, 10, *args), loaded.search(queries, 10, *args)
        assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])


def test_format_2_indexes_still_load_and_older_ones_are_refused(
    queries: np.ndarray, tmp_path: Path
) -> None:
    """Format 2 (before spaces and k_factor) held the L2 transform and re-ranked nothing."""
    index = ItemIndex.build(clustered(3000, seed=5), KINDS["ivf-flat"], progress=False)
    path = index.save(tmp_path / "index")
    meta = json.loads((path / "index.json").read_text())
    del meta["space"], meta["k_factor"], meta["config"]["spaces"]
    (path / "index.json").write_text(json.dumps({**meta, "format": 2}))
    loaded = ItemIndex.load(path)
    assert (loaded.kind, loaded.space, loaded.k_factor) == (index.kind, "l2", 1)
    before, after = index.search(queries, 10), loaded.search(queries, 10)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    (path / "index.json").write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(ValueError, match="index format 1, expected 3: rebuild its serving"):
        ItemIndex.load(path)


def test_load_rejects_a_directory_without_an_index(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"index\.json missing"):
        ItemIndex.load(tmp_path)


# --- bad inputs --------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors(exact: ItemIndex, queries: np.ndarray) -> None:
    nan = queries[:2].copy()
    nan[1, 3] = np.nan
    unsupported = IndexConfig(factories=("LSH",), spaces=("l2",), exact_threshold=10)
    flat_fast_scan = IndexConfig(factories=("PQ{dim}x4fs,RFlat",), exact_threshold=10)
    unknown = IndexConfig(factories=("NoSuchIndex",), exact_threshold=10)
    cases = [
        (lambda: exact.search(queries[:, :15], 5), "dimension 15"),
        (lambda: exact.search(queries[0], 5), "2-D"),
        (lambda: exact.search(nan, 5), "row 1 has NaN"),
        (lambda: exact.search(queries, 0), "k must be"),
        (lambda: exact.search(queries, 5, np.ones(10, bool)), r"shape \(20000,\)"),
        (lambda: exact.search(queries, 5, np.ones(exact.size)), "bool bitmap"),
        (lambda: exact.search(queries[:1], 5, exclude=[[exact.size]]), "outside"),
        (lambda: exact.search(queries[:2], 5, exclude=[[1]]), "one array of rows per query"),
        (lambda: exact.add(np.full((1, DIM), np.inf, np.float32)), "infinite"),
        (lambda: exact.update([1, 1], queries[:2]), "unique"),
        (lambda: ItemIndex.build(np.where(np.eye(4, DIM) > 0, np.nan, 0.0)), "NaN"),
        (lambda: ItemIndex.build(clustered(200, 0), unsupported), "unsupported factory"),
        (lambda: ItemIndex.build(clustered(200, 0), flat_fast_scan), "as IVF1,"),
        (lambda: ItemIndex.build(clustered(200, 0), unknown), "faiss cannot build"),
        (lambda: ItemIndex.build(clustered(200, 0), queries=queries[:, :4]), "dimension 4"),
        (lambda: IndexConfig(target_recall=1.5), "target_recall"),
        (lambda: IndexConfig(spaces=("cosine",)), "spaces must be some of"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
