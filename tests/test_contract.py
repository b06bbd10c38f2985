"""The Recommender contract, one suite for every model in `MODELS`.

A new model joins by being added to `MODELS` (and, if it is slow with its default
config, to `FAST_CONFIGS`; if it should learn the toy world, to `LEARNS_TOY_WORLD`).
Each model is fitted once per module on a noise-free toy world split leave-one-out.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from starsrec.baselines import BASELINES
from starsrec.data.baskets import BasketTargets
from starsrec.data.dataset import Dataset
from starsrec.data.interactions import Queries
from starsrec.data.splits import Split, split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.recommender import Filters, Recommender, Slots, TrainingData, apply_filters, top_k
from starsrec.serving.served import ServedRecommender
from starsrec.stars.variants import stars_variant
from tiny import TINY_LAMBDAMART, tiny

DAY = 86_400

# Config overrides that keep fitting fast; every other model uses its default config.
FAST_CONFIGS: dict[str, dict] = {"lambdamart": dataclasses.asdict(TINY_LAMBDAMART)}

# The tests' tiny STARS, large enough to learn the toy world.
TINY_STARS = tiny(
    model={"dim": 32, "max_length": 10, "attribute_dim": 8, "dropout": 0.1},
    train={
        "epochs": 80,
        "learning_rate": 5e-3,
        "uniform_negatives": 32,
        "subclass_negatives": 32,
        "patience": 40,
    },
    derived_subclasses=8,
    derived_classes=4,
)
STARS_MODELS = ("stars", "sasrec")
# STARS through the online service (encoder, index, own-item scores, request filters).
SERVED = "stars-served"
MODELS = (*BASELINES, *STARS_MODELS, SERVED)

# Models that must find the successor in the toy world (sequence-aware ones). The others
# (popularity, repeat history) have no way to: they serve as the "far worse" reference.
LEARNS_TOY_WORLD = {"cooccurrence-knn", "lambdamart", *STARS_MODELS, SERVED}
# Models that see the successor only through similar users' whole histories, in no order
# (TIFU-KNN's neighbours bought the rest of the chain): between the two.
PARTLY_LEARNS_TOY_WORLD = {"tifu-knn"}


def make_model(name: str) -> Recommender:
    if name == SERVED:
        return ServedRecommender(TINY_STARS)
    if name in STARS_MODELS:
        return stars_variant(name, TINY_STARS)
    cls = BASELINES[name]
    return cls(cls.config_class(**FAST_CONFIGS.get(name, {})))


@dataclass(frozen=True)
class World:
    dataset: Dataset
    split: Split
    data: TrainingData

    @property
    def n_items(self) -> int:
        return self.split.catalogue.size


@pytest.fixture(scope="module")
def world() -> World:
    dataset = make_toy_world(n_users=200, noise=0.0, seed=0)
    split = split_dataset(dataset, "leave-one-out")
    data = TrainingData(
        split.train,
        split.catalogue,
        country=dataset.country,
        validation=split.validation,
        validation_targets=BasketTargets.single(split.validation_target),
    )
    return World(dataset, split, data)


@pytest.fixture(scope="module")
def models(world: World) -> dict[str, Recommender]:
    """Fitted models by name, each fitted on first use and then shared by the module."""

    class Fitted(dict):
        def __missing__(self, name: str) -> Recommender:
            self[name] = make_model(name).fit(world.data)
            return self[name]

    return Fitted()


@pytest.fixture(params=list(MODELS))
def fitted(request: pytest.FixtureRequest, models: dict) -> tuple[str, Recommender]:
    return request.param, models[request.param]


def history_ids(world: World, queries: Queries, q: int) -> set[str]:
    return set(world.split.catalogue.item_ids[queries.log.item[queries.history(q)]].tolist())


# --- the registry itself ------------------------------------------------------------------


def test_registry_names_and_configs() -> None:
    assert len(BASELINES) >= 5
    assert LEARNS_TOY_WORLD.issubset(MODELS)
    assert PARTLY_LEARNS_TOY_WORLD.issubset(MODELS)
    assert set(FAST_CONFIGS).issubset(BASELINES)
    for name, cls in BASELINES.items():
        assert issubclass(cls, Recommender)
        assert cls.name == name
        assert dataclasses.is_dataclass(cls.config_class)
        assert cls.config_class.__dataclass_params__.frozen, name
        cls.config_class()  # every config has defaults


# --- scoring ------------------------------------------------------------------------------


def test_score_shape_dtype_finite(fitted, world: World) -> None:
    _, model = fitted
    for queries in (world.split.test, world.split.validation):
        scores = model.score(queries)
        assert scores.shape == (len(queries), world.n_items)
        assert scores.dtype == np.float32
        assert np.isfinite(scores).all()


# Neural models run batched float32 matrix products, whose rounding depends on the batch
# shape (BLAS blocking): their scores agree to float precision, their rankings exactly.
FLOAT_BATCHING = set(STARS_MODELS)


def test_batch_equals_single(fitted, world: World) -> None:
    name, model = fitted
    queries = world.split.test
    ids, scores = model.recommend(queries, k=10)
    assert ids.shape == scores.shape == (len(queries), 10)
    for q in range(len(queries)):
        one_ids, one_scores = model.recommend(queries[q : q + 1], k=10)
        np.testing.assert_array_equal(one_ids[0], ids[q])
        if name in FLOAT_BATCHING:
            np.testing.assert_allclose(one_scores[0], scores[q], rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(one_scores[0], scores[q])


def test_recommend_is_the_top_of_score(fitted, world: World) -> None:
    _, model = fitted
    queries = world.split.test
    scores = model.score(queries)
    ids, top = model.recommend(queries, k=5)
    index = world.split.catalogue.index_of(ids.ravel()).reshape(ids.shape)
    np.testing.assert_array_equal(np.take_along_axis(scores, index, axis=1), top)
    assert (np.diff(top, axis=1) <= 0).all()  # best first
    # No item outside the list scores higher than the list's last item.
    assert (np.sort(scores, axis=1)[:, -6] <= top[:, -1]).all()


# --- filters ------------------------------------------------------------------------------


def test_slots_place_as_the_placed_scores_rank(fitted, world: World) -> None:
    _, model = fitted
    catalogue, queries = world.split.catalogue, world.split.test
    members = np.random.default_rng(0).random(catalogue.size) < 0.25
    filters = Filters(slots=Slots(members, count=2, after=3))
    scores = model.score(queries).astype(np.float32)
    ranked = np.isfinite(scores)  # a model may leave items unranked (-inf)
    third, fourth = -np.sort(-scores, axis=1)[:, 2:4].T  # a tie there: placed after it
    apply_filters(scores, queries, catalogue, filters)
    expected, expected_scores = top_k(scores, 10)
    ids, top = model.recommend(queries, k=10, filters=filters)
    np.testing.assert_array_equal(ids, catalogue.item_ids[expected])
    np.testing.assert_array_equal(top, expected_scores)
    # The first 5 places hold 2 members wherever 2 ranked members and 5 ranked items exist
    # and the 3rd place is not tied.
    first = np.where(ids[:, :5] != "", ids[:, :5], catalogue.item_ids[0])
    kept = members[catalogue.index_of(first.ravel())].reshape(len(ids), 5) & (ids[:, :5] != "")
    can = (ranked.sum(axis=1) >= 5) & ((ranked & members).sum(axis=1) >= 2) & (third > fourth)
    assert can.any()
    assert (kept.sum(axis=1)[can] >= 2).all()


def test_exclude_removes_exactly_those_items(fitted, world: World) -> None:
    _, model = fitted
    queries = world.split.test
    full_ids, full_scores = model.recommend(queries, k=10)
    # Per query: its own top 3, plus an id that is not in the catalogue (ignored).
    exclude = [[*row[:3].tolist(), "not-an-item"] for row in full_ids]
    ids, scores = model.recommend(queries, k=7, filters=Filters(exclude=exclude))
    np.testing.assert_array_equal(ids, full_ids[:, 3:])
    np.testing.assert_array_equal(scores, full_scores[:, 3:])
    with pytest.raises(ValueError, match="one list per query"):
        model.recommend(queries, k=7, filters=Filters(exclude=exclude[:-1]))


def test_allowed_mask_scopes_to_a_class(fitted, world: World) -> None:
    _, model = fitted
    catalogue = world.split.catalogue
    allowed = catalogue.item_class == catalogue.class_names.index("class-1")
    assert 0 < allowed.sum() < catalogue.size
    queries = world.split.test
    full_ids, _ = model.recommend(queries, k=catalogue.size)
    ids, scores = model.recommend(queries, k=10, filters=Filters(allowed=allowed))
    allowed_ids = set(catalogue.item_ids[allowed].tolist())
    for q in range(len(queries)):
        expected = [i for i in full_ids[q] if i in allowed_ids][:10]
        assert ids[q].tolist() == expected
    assert np.isfinite(scores).all()
    with pytest.raises(ValueError, match="one flag per catalogue item"):
        model.recommend(queries, k=10, filters=Filters(allowed=allowed[:-1]))


def test_exclude_seen_never_returns_history(fitted, world: World) -> None:
    _, model = fitted
    queries = world.split.test
    ids, scores = model.recommend(queries, k=20, filters=Filters(exclude_seen=True))
    assert np.isfinite(scores).all()  # 72 items, histories of at most 7: 20 remain
    for q in range(len(queries)):
        assert not set(ids[q].tolist()) & history_ids(world, queries, q)


# --- k ------------------------------------------------------------------------------------


def test_k_larger_than_catalogue(fitted, world: World) -> None:
    _, model = fitted
    n = world.n_items
    queries = world.split.test[:20]
    ids, scores = model.recommend(queries, k=n + 50)
    assert ids.shape == scores.shape == (20, n)
    assert np.isfinite(scores).all()
    for row in ids:
        assert sorted(row.tolist()) == sorted(world.split.catalogue.item_ids.tolist())


def test_k_larger_than_filtered_catalogue_pads(fitted, world: World) -> None:
    _, model = fitted
    catalogue = world.split.catalogue
    allowed = catalogue.item_class == catalogue.class_names.index("class-0")
    allowed_ids = set(catalogue.item_ids[allowed].tolist())
    queries = world.split.test[:20]
    filters = Filters(allowed=allowed, exclude_seen=True)
    ids, scores = model.recommend(queries, k=1000, filters=filters)
    assert ids.shape == scores.shape == (20, catalogue.size)
    for q in range(len(queries)):
        valid = allowed_ids - history_ids(world, queries, q)
        n_valid = len(valid)
        assert set(ids[q, :n_valid].tolist()) == valid
        assert np.isfinite(scores[q, :n_valid]).all()
        assert (ids[q, n_valid:] == "").all()
        assert (scores[q, n_valid:] == -np.inf).all()


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_raises(fitted, world: World, k: int) -> None:
    _, model = fitted
    with pytest.raises(ValueError, match="k must be >= 1"):
        model.recommend(world.split.test, k=k)


# --- determinism and persistence ----------------------------------------------------------


def test_two_fits_are_identical(fitted, world: World) -> None:
    name, model = fitted
    again = make_model(name).fit(world.data)
    np.testing.assert_array_equal(again.score(world.split.test), model.score(world.split.test))


def test_save_load_round_trip(fitted, world: World, tmp_path: Path) -> None:
    name, model = fitted
    cls = type(model)
    path = model.save(tmp_path / name)
    loaded = cls.load(path)
    assert type(loaded) is cls
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.catalogue.item_ids, world.split.catalogue.item_ids)
    np.testing.assert_array_equal(loaded.catalogue.item_class, world.split.catalogue.item_class)
    np.testing.assert_array_equal(loaded.catalogue.subclass, world.split.catalogue.subclass)
    queries = world.split.test
    np.testing.assert_array_equal(loaded.score(queries), model.score(queries))
    filters = Filters(exclude_seen=True)
    for a, b in zip(
        loaded.recommend(queries, k=10, filters=filters),
        model.recommend(queries, k=10, filters=filters),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_load_with_the_wrong_class_raises(fitted, tmp_path: Path) -> None:
    name, model = fitted
    path = model.save(tmp_path / name)
    for other in BASELINES.values():
        if other.name == model.name:
            continue
        message = f"holds a '{model.name}' model, not '{other.name}'"
        with pytest.raises(ValueError, match=re.escape(message)):
            other.load(path)


@pytest.mark.parametrize("name", list(MODELS))
def test_unfitted_model_raises(name: str, world: World, tmp_path: Path) -> None:
    model = make_model(name)
    with pytest.raises(RuntimeError, match=r"not fitted: call fit\(\) or load\(\)"):
        model.recommend(world.split.test, k=5)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.save(tmp_path / name)


# --- anonymous histories ------------------------------------------------------------------


def test_anonymous_histories(fitted, world: World) -> None:
    _, model = fitted
    catalogue = world.split.catalogue
    histories = [
        catalogue.index_of(["s0-n2", "s0-n3", "s0-n4"]).tolist(),
        catalogue.index_of(["s3-n6"]).tolist(),
        [],  # a shopper with no history yet, beside others
    ]
    queries = Queries.from_histories(histories, world.dataset.event_types)
    scores = model.score(queries)
    assert scores.shape == (3, world.n_items)
    assert scores.dtype == np.float32
    assert np.isfinite(scores).all()
    ids, top = model.recommend(queries, k=5, filters=Filters(exclude_seen=True))
    assert ids.shape == (3, 5)
    assert np.isfinite(top).all()
    assert not set(ids[0].tolist()) & {"s0-n2", "s0-n3", "s0-n4"}
    assert "s3-n6" not in ids[1].tolist()


def test_anonymous_empty_history_alone(fitted, world: World) -> None:
    _, model = fitted
    # Every history in the batch is empty, so the batch event log has no rows at all.
    queries = Queries.from_histories([[]], world.dataset.event_types)
    ids, scores = model.recommend(queries, k=5)
    assert ids.shape == (1, 5)
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("name", ["popularity", "cooccurrence-knn"])
def test_anonymous_history_matches_known_user_when_time_free(
    name: str, models: dict, world: World
) -> None:
    # Models that ignore time see the same thing in a test query and in its history
    # replayed anonymously (popularity and co-occurrence use neither user nor time).
    queries = world.split.test
    histories = [queries.log.item[queries.history(q)].tolist() for q in range(len(queries))]
    anonymous = Queries.from_histories(histories, world.dataset.event_types)
    model = models[name]
    np.testing.assert_array_equal(model.score(anonymous), model.score(queries))


# --- the known right answer ---------------------------------------------------------------


def hit_at_1(model: Recommender, queries: Queries, targets: np.ndarray, world: World) -> float:
    # Nobody in the toy world buys an item twice, so items already bought are excluded
    # (as EvaluationConfig(exclude_seen=True) would). Under leave-one-out the last two
    # items of every chain are only ever held-out targets, never training events, so
    # about 28% of test targets are cold here and no model can reach hit@1 = 1.
    ids, _ = model.recommend(queries, k=1, filters=Filters(exclude_seen=True))
    return float((ids[:, 0] == world.split.catalogue.item_ids[targets]).mean())


def test_known_right_answer(fitted, world: World) -> None:
    name, model = fitted
    hit = hit_at_1(model, world.split.test, world.split.test_target, world)
    # Measured: cooccurrence-knn 0.69, lambdamart 0.72 (all warm targets); popularity,
    # recent-popularity, repeat-history and top-frequency 0.015; tifu-knn 0.285.
    if name in LEARNS_TOY_WORLD:
        assert hit >= 0.5, f"{name} hit@1 {hit:.3f}"
    elif name in PARTLY_LEARNS_TOY_WORLD:
        assert 0.2 <= hit < 0.5, f"{name} hit@1 {hit:.3f}"
    else:
        assert hit <= 0.1, f"{name} hit@1 {hit:.3f}"


@pytest.mark.parametrize("name", sorted(LEARNS_TOY_WORLD))
def test_learners_find_the_successor_for_anonymous_chains(
    name: str, models: dict, world: World
) -> None:
    model = models[name]
    catalogue = world.split.catalogue
    # Mid-chain walks (their successors are in the training data) asked the day after
    # training ends, as a live request would be.
    walks = [(s, n) for s in range(6) for n in (2, 4, 6)]
    histories = [
        catalogue.index_of([f"s{s}-n{n + step}" for step in range(3)]).tolist() for s, n in walks
    ]
    successors = catalogue.index_of([f"s{s}-n{n + 3}" for s, n in walks])
    queries = Queries.from_histories(
        histories, world.dataset.event_types, time=world.split.train_end + DAY
    )
    hit = hit_at_1(model, queries, successors, world)
    # Measured: cooccurrence-knn 17/18, lambdamart 18/18; tiny STARS 14 to 16 of 18 over
    # seeds 0-3 (its seed moves it by two walks), so the bar sits below that spread.
    assert hit >= 0.7, f"{name} hit@1 {hit:.3f} on anonymous chains"
