"""Live signals (`starsrec.data.live`): the replayed counts equal the definition, and the
counters a store keeps on insert read the same numbers."""

from __future__ import annotations

import numpy as np

from starsrec.data.calendar import DAY
from starsrec.data.dataset import EventType
from starsrec.data.interactions import EventLog
from starsrec.data.live import (
    LIVE_HALF_LIVES_DAYS,
    counter_table,
    decay_rates,
    fold,
    replay_counts,
)

TYPES = (EventType("purchase", 1.0, True), EventType("return", 0.0, False))


def toy_log(seed: int = 0, n_events: int = 200, n_items: int = 6) -> EventLog:
    """Events of three users at random times over ten days (some sharing a second), a
    fifth of them returns (not targets)."""
    rng = np.random.default_rng(seed)
    user = np.sort(rng.integers(0, 3, n_events))
    stamps = rng.integers(0, 10 * DAY // 60, n_events) * 60
    order = np.lexsort((stamps, user))
    counts = np.bincount(user, minlength=3)
    return EventLog(
        user=user[order],
        item=rng.integers(0, n_items, n_events)[order],
        timestamp=stamps[order],
        event_type=(rng.random(n_events) < 0.2).astype(np.int16),
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        user_ids=np.array(["a", "b", "c"]),
        event_types=TYPES,
    )


def definition(log: EventLog, at: int, n_items: int) -> np.ndarray:
    """(N, H) sum over target events strictly before `at` of 2^(-(at - t) / h)."""
    out = np.zeros((n_items, len(LIVE_HALF_LIVES_DAYS)))
    for item, stamp, target in zip(log.item, log.timestamp, log.is_target, strict=True):
        if target and stamp < at:
            out[item] += [2.0 ** (-(at - stamp) / (h * DAY)) for h in LIVE_HALF_LIVES_DAYS]
    return out


def test_replayed_counts_equal_the_definition_in_any_query_order() -> None:
    log = toy_log()
    event_times = log.timestamp[:5]  # requests at an event's own second exclude it
    times = np.concatenate([[11 * DAY, 0, 5 * DAY + 17], event_times, [3 * DAY]])
    counts = replay_counts(log, times, 6)
    assert counts.shape == (len(times), 6, len(LIVE_HALF_LIVES_DAYS))
    for q, at in enumerate(times):
        np.testing.assert_allclose(counts[q], definition(log, int(at), 6), rtol=1e-5, atol=1e-6)
    assert not counts[1].any()  # nothing before the first second


def test_counters_folded_on_insert_in_any_order_read_the_replayed_counts() -> None:
    """What a store keeps (`fold` per event, `read` at request time) equals the replay."""
    log = toy_log(seed=1)
    rates = decay_rates()
    shuffled = np.random.default_rng(2).permutation(log.size)
    value = np.zeros((6, len(rates)))
    updated = np.full(6, -np.inf)
    for row in shuffled:
        if log.is_target[row]:
            item = log.item[row]
            value[item], updated[item] = fold(value[item], updated[item], log.timestamp[row], rates)
    at = float(log.timestamp.max() + 3600)
    rows = [
        (f"i{item}", days, value[item, h], updated[item])
        for item in np.flatnonzero(np.isfinite(updated))
        for h, days in enumerate(LIVE_HALF_LIVES_DAYS)
    ]
    ids, counts = counter_table(rows, at)
    want = replay_counts(log, np.array([at]), 6)[0]
    np.testing.assert_allclose(counts, want[[int(i[1:]) for i in ids]], rtol=1e-6)


def test_a_counter_reads_halved_after_its_half_life() -> None:
    value, updated = fold(np.zeros(2), -np.inf, 1000.0, decay_rates())
    rows = [("x", days, value[h], updated) for h, days in enumerate(LIVE_HALF_LIVES_DAYS)]
    ids, counts = counter_table([*rows, ("x", 30.0, 5.0, 0.0)], 1000.0 + DAY)  # 30: not kept
    assert ids == ["x"]
    np.testing.assert_allclose(counts, [[0.5, 2 ** (-1 / 7)]])


def test_the_served_merge_keeps_the_exact_top_k_and_skips_rows_that_cannot_reach_it() -> None:
    """`with_added` on the exact index's top k gives the top k of (score + live term) over
    every allowed row not skipped, ties aside; rows whose live term cannot lift them past
    the k-th are not scored, and with fewer than k found every live row is."""
    from starsrec.index.exact import inner_scores
    from starsrec.serving.live_items import with_added

    rng = np.random.default_rng(0)
    n, k = 500, 10
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    query = rng.normal(size=8).astype(np.float32)
    base = inner_scores(query[None], vectors)[0]
    skip = np.array([3, 7])
    allowed = rng.random(n) > 0.2
    for trial in range(20):
        rows = np.sort(rng.choice(n, size=200, replace=False))
        # heavy-tailed like sales: most terms tiny, a few large
        terms = (rng.pareto(1.5, size=200) * (0.05 if trial % 2 else 1.0)).astype(np.float32)
        eligible = allowed.copy()
        eligible[skip] = False
        plain = np.where(eligible, base, -np.inf)
        found = np.argsort(-plain)[:k]
        merged, scores = with_added(
            found, base[found], (rows, terms), vectors, query, skip, allowed
        )
        total = plain.copy()
        total[rows] += terms
        want = np.sort(total)[::-1][:k]
        got = np.sort(scores)[::-1][:k]
        np.testing.assert_allclose(got, want, rtol=1e-5)
        assert len(merged) <= k + len(rows)
        # The index searched deeper than k: the same top k, and no more rows scored.
        deep = np.argsort(-plain)[: 5 * k]
        deeper, deep_scores = with_added(
            deep, base[deep], (rows, terms), vectors, query, skip, allowed, k
        )
        np.testing.assert_allclose(np.sort(deep_scores)[::-1][:k], want, rtol=1e-5)
        assert len(np.setdiff1d(deeper, deep)) <= len(np.setdiff1d(merged, found))
    # The found items selling well and every other live row a little: no other row can
    # pass the k-th found, so none is scored.
    rows = np.union1d(rows, found)
    tiny_terms = np.where(np.isin(rows, found), 5.0, 1e-6).astype(np.float32)
    merged, _ = with_added(found, base[found], (rows, tiny_terms), vectors, query, skip, allowed)
    assert set(merged) == set(found)
    # Fewer than k found (a narrow filter): every allowed live row is a candidate.
    short = np.concatenate([found[:3], [-1] * (k - 3)])
    short_scores = np.concatenate([base[found[:3]], np.zeros(k - 3, np.float32)])
    merged, _ = with_added(short, short_scores, (rows, tiny_terms), vectors, query, skip, allowed)
    expected = {int(r) for r in rows if allowed[r] and r not in skip} | set(found[:3].tolist())
    assert set(merged.tolist()) == expected


def test_a_live_row_just_past_the_bound_is_scored() -> None:
    """The bound is exact: a row below the index's deep list whose live term lifts it just
    past the k-th is scored (a bound taken from the (k-1)-th would leave it out)."""
    from starsrec.serving.live_items import with_added

    k, depth = 10, 50
    base = np.concatenate([1000.0 - np.arange(k - 1), [10.0], 9.0 - 0.01 * np.arange(190)])
    vectors = np.zeros((len(base), 4), np.float32)
    vectors[:, 0] = base
    query = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    found = np.arange(depth)  # the index's top 50
    row = depth  # the next row: 0.01 below the last found
    term = np.float32(base[k - 1] - base[row] + 0.5)
    merged, scores = with_added(
        found,
        base[found].astype(np.float32),
        (np.array([row]), np.array([term])),
        vectors,
        query,
        np.empty(0, np.int64),
        None,
        k,
    )
    top = merged[np.argsort(-scores, kind="stable")][:k]
    assert row in top and (k - 1) not in top
