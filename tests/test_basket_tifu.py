"""TIFU-KNN by hand: the time-decayed frequency vectors (against a loop version), the
neighbour blend, and the validation grid's choice on a constructed case."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from starsrec.baselines import tifu
from starsrec.baselines.tifu import TifuKnnConfig, TifuKnnRecommender, tifu_vectors
from starsrec.baselines.topfreq import history_baskets
from starsrec.data.baskets import BasketTargets, next_basket
from starsrec.data.interactions import Queries
from starsrec.evaluation.evaluate import validation_metric
from starsrec.recommender import TrainingData
from test_basket_topfreq import ITEMS, TYPES, U1, idx, shop, whole_histories


def test_tifu_vector_by_hand() -> None:
    log, _ = shop(U1)
    baskets = history_baskets(whole_histories(log))  # [a, b], [a], [c]
    a, b, c = idx("abc")
    # Two groups of 3 baskets: [a, b] alone, then [a], [c] (the longer group last).
    # Basket weights r_b^(2, 1, 0) = 1/4, 1/2, 1; group weights r_g^(1, 0) = 1/2, 1; each
    # group the mean of its baskets; the sum over the 2 groups halved.
    # a: (1/4 * 1/2 + 1/2 / 2 * 1) / 2 = 3/16; b: 1/4 * 1/2 / 2 = 1/16; c: 1 / 2 / 2 = 1/4.
    vector = tifu_vectors(baskets, len(ITEMS), 2, 0.5, 0.5).toarray()[0]
    np.testing.assert_allclose(vector[[a, b, c]], [3 / 16, 1 / 16, 1 / 4])
    assert vector.sum() == pytest.approx(0.5)
    # Four groups, three baskets: each basket its own group, group weights still
    # r_g^(groups - 1 - j) = 1/8, 1/4, 1/2; the sum divided by the 3 groups formed.
    vector = tifu_vectors(baskets, len(ITEMS), 4, 0.5, 0.5).toarray()[0]
    np.testing.assert_allclose(vector[[a, b, c]], [5 / 96, 1 / 96, 16 / 96])
    # No decay, one group: the share of baskets holding each item.
    vector = tifu_vectors(baskets, len(ITEMS), 1, 1.0, 1.0).toarray()[0]
    np.testing.assert_allclose(vector[[a, b, c]], [2 / 3, 1 / 3, 1 / 3])


def naive_vector(history: list[list[int]], groups: int, r_b: float, r_g: float) -> np.ndarray:
    """The TIFU user vector with loops: multi-hot baskets, `groups` groups (the later ones
    longer by one when they do not divide evenly), basket decay by distance from the newest."""
    n = len(history)
    weighted = []
    for i, basket in enumerate(history):
        vector = np.zeros(len(ITEMS))
        vector[sorted(set(basket))] = r_b ** (n - 1 - i)
        weighted.append(vector)
    if n < groups:
        sizes = [1] * n
    else:
        short = groups - n % groups
        sizes = [n // groups] * short + [n // groups + 1] * (groups - short)
    total, start = np.zeros(len(ITEMS)), 0
    for j, size in enumerate(sizes):
        total += np.mean(weighted[start : start + size], axis=0) * r_g ** (groups - 1 - j)
        start += size
    return total / len(sizes)


def test_tifu_vectors_match_the_loops_on_random_histories() -> None:
    rng = np.random.default_rng(0)
    histories = [
        [rng.choice(len(ITEMS), size=rng.integers(1, 4)).tolist() for _ in range(n)]
        for n in (1, 2, 3, 5, 7, 8, 10, 13, 22)
    ]
    rows = [
        (f"u{u:02d}", ITEMS[item], f"2024-01-{day + 1:02d}", "purchase")
        for u, history in enumerate(histories)
        for day, basket in enumerate(history)
        for item in basket
    ]
    log, _ = shop(rows)
    queries = whole_histories(log)
    for groups, r_b, r_g in itertools.product((1, 3, 7), (0.6, 1.0), (0.5, 0.9)):
        vectors = tifu_vectors(history_baskets(queries), len(ITEMS), groups, r_b, r_g).toarray()
        for u, history in enumerate(histories):
            expected = naive_vector(history, groups, r_b, r_g)
            np.testing.assert_allclose(vectors[u], expected, err_msg=f"{groups} {r_b} {r_g} {u}")


# Neighbours: u1 bought a, then b; u2 a, then c; u3 f, then g. Query: u1 with one more
# basket [a]. Own vectors under one group, no decay: basket shares.
NEIGHBOURS = [
    ("u1", "a", "2024-01-01", "purchase"),
    ("u1", "b", "2024-01-02", "purchase"),
    ("u2", "a", "2024-01-01", "purchase"),
    ("u2", "c", "2024-01-02", "purchase"),
    ("u3", "f", "2024-01-01", "purchase"),
    ("u3", "g", "2024-01-02", "purchase"),
]


def flat(**changes: object) -> TifuKnnConfig:
    base = TifuKnnConfig(groups=1, within_decay=1.0, group_decay=1.0, tune=False)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_neighbours_blend_as_alpha_says_and_exclude_the_user() -> None:
    log, catalogue = shop(NEIGHBOURS)
    model = TifuKnnRecommender(flat(neighbours=1, alpha=0.25)).fit(TrainingData(log, catalogue))
    a, b, c = idx("abc")
    # The pool: u1 (a 1/2, b 1/2), u2 (a 1/2, c 1/2), u3 (f 1/2, g 1/2).
    np.testing.assert_allclose(
        model.pool.toarray()[:, [a, b, c]], [[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0, 0]]
    )
    # u1's own history (its training events): its nearest user would be itself; left out,
    # the nearest is u2 (distance^2 1/2, u3's is 1).
    queries = Queries.for_users(log, ["u1"])
    own = np.zeros(len(ITEMS))
    own[[a, b]] = 0.5
    neighbour = np.zeros(len(ITEMS))
    neighbour[[a, c]] = 0.5
    np.testing.assert_allclose(model.blended(queries)[0], 0.25 * own + 0.75 * neighbour)
    # Two neighbours: u2 and u3 averaged.
    model.config = flat(neighbours=2, alpha=0.25)
    mean = (neighbour + model.pool.toarray()[2]) / 2
    np.testing.assert_allclose(model.blended(queries)[0], 0.25 * own + 0.75 * mean)
    # An anonymous history [a, b] has every user as a candidate: u1 (distance 0) first.
    model.config = flat(neighbours=1, alpha=0.5)
    anonymous = Queries.from_histories([idx("a"), idx("b")], TYPES)  # one timestamp: 1 basket
    np.testing.assert_allclose(model.blended(anonymous)[0], 0.5 * np.eye(len(ITEMS))[a] + 0.5 * own)
    # alpha = 1: the user's own vector alone, popularity for the rest.
    model.config = flat(neighbours=1, alpha=1.0)
    np.testing.assert_allclose(model.blended(queries)[0], own)
    ids, _ = model.recommend(queries, k=3)
    assert ids[0].tolist() == ["a", "b", "c"]  # a, b own; then c (popularity 1, by index)


def grid_world() -> tuple[TrainingData, Queries, BasketTargets]:
    """Validation baskets (2024-01-05) a decay and a neighbour make easy.

    Repeaters u0..u5 bought [a], [a], [a], [b] and next buy [b]: only a within-basket decay
    of 1/2 puts their newest item b above a (with none, a's 3/4 beats b's 1/4). Explorer x
    bought [c], [d] and next buys [e], which only y (training: [c], [d], [e]) bought: y is
    x's nearest user, so one neighbour and a low alpha rank e first (with decay 1/2:
    0.8 * 1/3 against d's 0.2 * 1/2 + 0.8 * 1/6); three neighbours bring the repeaters'
    a and b in, and alpha 1 leaves e to popularity.
    """
    rows = []
    for u in range(6):
        rows += [
            (f"u{u}", item, f"2024-01-0{day}", "purchase") for day, item in enumerate("aaab", 1)
        ]
        rows.append((f"u{u}", "b", "2024-01-05", "purchase"))
    rows += [("x", item, f"2024-01-0{day}", "purchase") for day, item in enumerate("cd", 1)]
    rows.append(("x", "e", "2024-01-05", "purchase"))
    rows += [("y", item, f"2024-01-0{day}", "purchase") for day, item in enumerate("cde", 1)]
    log, catalogue = shop(rows)
    split = next_basket(log, catalogue, "2024-01-05", "2024-01-06")
    data = TrainingData(
        split.train,
        catalogue,
        validation=split.validation,
        validation_targets=split.validation_targets,
    )
    return data, split.validation, split.validation_targets


GRID = {
    "groups": (1, 2),
    "within_decay": (1.0, 0.5),
    "group_decay": (1.0,),
    "neighbours": (3, 1),
    "alpha": (1.0, 0.2),
}


def test_the_grid_picks_the_validation_best(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tifu, "TUNING_GRID", GRID)
    data, validation, targets = grid_world()
    assert len(validation) == 7
    tuned = TifuKnnRecommender().fit(data)
    values = {}
    for setting in itertools.product(*GRID.values()):
        config = TifuKnnConfig(**dict(zip(GRID, setting, strict=True)), tune=False)  # type: ignore[arg-type]
        model = TifuKnnRecommender(config).fit(data)
        values[setting] = validation_metric(model, validation, targets, exclude_seen=False)
    best = max(values, key=lambda s: values[s])  # the first of equals, in grid order
    assert tuple(getattr(tuned.config, f) for f in GRID) == best
    # The constructed answer: decay 1/2, one neighbour, alpha 0.2 rank every basket first.
    assert (tuned.config.within_decay, tuned.config.neighbours, tuned.config.alpha) == (0.5, 1, 0.2)
    assert values[best] == pytest.approx(1.0)
    assert values[(1, 1.0, 1.0, 3, 1.0)] < 1.0
    assert tuned.config.tune
    refit = TifuKnnRecommender(dataclasses.replace(tuned.config, tune=False)).fit(data)
    np.testing.assert_array_equal(tuned.score(validation), refit.score(validation))


def test_no_validation_keeps_the_defaults() -> None:
    data, _, _ = grid_world()
    model = TifuKnnRecommender().fit(TrainingData(data.train, data.catalogue))
    assert model.config == TifuKnnConfig()
