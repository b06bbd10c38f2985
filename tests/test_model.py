"""The STARS model: shapes, causality, cold items and exact training resume."""

import dataclasses
from dataclasses import replace

import numpy as np
import pytest
import torch

from starsrec.data.calendar import CalendarEvents
from starsrec.data.interactions import Catalogue, EventLog, Queries
from starsrec.data.splits import split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.recommender import TrainingData
from starsrec.stars.batch import PAD, slot_of
from starsrec.stars.calibration import calibrated
from starsrec.stars.config import ModelConfig
from starsrec.stars.loss import basket_loss, next_baskets, training_loss
from starsrec.stars.model import STARS
from starsrec.stars.optim import RowWiseAdagrad, stars_optimizer
from starsrec.stars.recommender import StarsConfig, StarsRecommender
from starsrec.stars.repeats import (
    RepeatFeatures,
    carried_repeats,
    history_counts,
    history_repeats,
)
from starsrec.stars.sequences import featurize, query_windows, training_windows
from starsrec.stars.train import TrainConfig, train_model
from tiny import tiny

TINY = tiny(model={"dropout": 0.1}).model  # the tests' tiny model, as these tests build it


@pytest.fixture(scope="module")
def world():
    dataset = make_toy_world(n_users=40)
    catalogue = Catalogue.from_items(dataset.items)
    log = EventLog.from_dataset(dataset, catalogue)
    calendar = CalendarEvents.build("GB", 2023, 2025)
    return catalogue, log, calendar


def build(catalogue: Catalogue, calendar: CalendarEvents, config=TINY, warm=None) -> STARS:
    torch.manual_seed(0)
    n = catalogue.size
    text = torch.nn.functional.normalize(torch.randn(n, 12), dim=1)
    tags = (torch.rand(n, 5) > 0.7).float()
    warm = torch.ones(n, dtype=torch.bool) if warm is None else warm
    item_class = torch.from_numpy(np.maximum(catalogue.item_class, 0).astype(np.int64))
    return STARS(config, text, tags, item_class, warm, 1, len(calendar.names))


def batch_of(log: EventLog, calendar: CalendarEvents, length: int = TINY.max_length):
    windows = training_windows(log, length)[:6]
    return featurize(log, windows[:, :-1], log.timestamp[windows[:, -1]], calendar, 30.0)


def test_shapes(world) -> None:
    catalogue, log, calendar = world
    model = build(catalogue, calendar).eval()
    batch = batch_of(log, calendar)
    assert model.encode(batch).shape == (6, TINY.max_length + 1, 16)  # (B, T+1, D)
    query = model.user_side(batch)[0]
    assert query.shape == (6, TINY.max_length, 16)  # (B, T, D)
    slots = torch.tensor([1, 5, 9])
    assert model.score(query, slots, batch.request_events).shape == (6, TINY.max_length, 3)
    assert model.item_vectors().shape == (catalogue.size, 16)


def test_future_events_never_change_past_outputs(world) -> None:
    catalogue, log, calendar = world
    model = build(catalogue, calendar).eval()
    batch = batch_of(log, calendar)
    before = model.user_side(batch)[0]
    cut = 4
    changed = replace(batch, items=batch.items.clone(), event_types=batch.event_types.clone())
    future = changed.items[:, cut + 1 :]
    changed.items[:, cut + 1 :] = torch.where(future != PAD, (future % catalogue.size) + 1, PAD)
    after = model.user_side(changed)[0]
    assert torch.allclose(before[:, : cut + 1], after[:, : cut + 1], atol=1e-6)
    assert not torch.allclose(before[:, cut + 1 :], after[:, cut + 1 :])


@pytest.mark.parametrize("space", ["text", "width"])
def test_cold_items_get_vectors_from_text_and_tags_alone(world, space) -> None:
    catalogue, _, calendar = world
    warm = torch.ones(catalogue.size, dtype=torch.bool)
    warm[:3] = False
    config = replace(TINY, delta_space=space)
    model = build(catalogue, calendar, config, warm=warm).eval()  # no cold dropout
    width = 12 if space == "text" else config.dim  # the text's width or the model's
    assert model.item_tokens.delta.weight.shape == (catalogue.size + 1, width)
    with torch.no_grad():
        model.item_tokens.delta.weight.fill_(0.5)  # as if every item had learned a delta
        model.item_bias.weight.fill_(1.0)
    tokens = model.item_tokens
    slots = torch.arange(1, catalogue.size + 1)
    text_only = tokens.project(
        torch.cat([tokens.text[slots], tokens.attributes(tokens.tags[slots])], dim=-1)
    )
    vectors = model.item_vectors()
    assert torch.allclose(vectors[:3], text_only[:3])  # cold: no delta
    assert not torch.allclose(vectors[3:], text_only[3:])  # warm: delta applied
    bias, _ = model.item_terms(slots, torch.zeros(len(calendar.names)))
    assert bias[:3].eq(0).all() and bias[3:].eq(1).all()


@pytest.mark.parametrize("space", ["text", "width"])
@pytest.mark.parametrize("ids", [False, True])
def test_tokens_projected_once_per_item_match_row_by_row(world, space, ids) -> None:
    catalogue, _, calendar = world
    model = build(catalogue, calendar, replace(TINY, delta_space=space, use_item_id=ids))
    tokens = model.item_tokens
    with torch.no_grad():
        tokens.delta.weight.normal_()
    slots = torch.tensor([[3, 1, 3, PAD], [1, 7, 7, 3]])  # repeated items, as a batch has
    owned = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]])  # a cold-dropout draw
    delta = tokens.delta(slots) * owned.unsqueeze(-1)
    id_rows = tokens.item_id(slots) if ids else None

    def reference(delta):  # every position through the tower on its own
        return tokens.combine(tokens.text[slots], tokens.tags[slots], delta, id_rows)

    warm, cold = tokens.with_cold(slots, owned)
    torch.testing.assert_close(tokens(slots, owned), reference(delta))
    torch.testing.assert_close(warm, reference(delta))
    torch.testing.assert_close(cold, reference(torch.zeros_like(delta)))
    torch.testing.assert_close(tokens.with_cold(slots, owned, cold=False)[0], reference(delta))


def test_switches_remove_components() -> None:
    with pytest.raises(ValueError, match="delta_space"):
        ModelConfig(delta_space="items")
    sasrec = ModelConfig(use_text=False, use_tags=False, use_item_id=True)
    assert sasrec.use_item_id
    with pytest.raises(ValueError, match="needs a representation"):
        ModelConfig(use_text=False, use_tags=False, use_item_id=False)


@pytest.mark.parametrize("item_optimizer", ["adamw", "rowwise-adagrad"])
def test_training_resumes_exactly(world, tmp_path, item_optimizer) -> None:
    catalogue, log, calendar = world
    subclass = np.maximum(catalogue.subclass, 0).astype(np.int64)
    config = TrainConfig(
        epochs=2,
        batch_size=16,
        uniform_negatives=8,
        subclass_negatives=8,
        progress=False,
        item_optimizer=item_optimizer,
    )
    straight = build(catalogue, calendar)
    train_model(straight, log, subclass, calendar, config)

    resumed = build(catalogue, calendar)
    checkpoints = tmp_path / "checkpoints"
    train_model(resumed, log, subclass, calendar, replace(config, epochs=1), None, checkpoints)
    resumed = build(catalogue, calendar)  # a fresh process: only the checkpoint survives
    state = train_model(resumed, log, subclass, calendar, config, None, checkpoints)
    assert state.epoch == 2
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"use_calendar_offsets": False},
        {"use_item_bias": False},
        {"use_new_item_bias": False},
        {"delta_space": "width"},
    ],
)
def test_the_inner_product_score_matches_the_reference(world, switches) -> None:
    """Training's fast path `score_inner` (inner products, row blocks that skip what no
    request there needs) equals the reference `score` plus the shift, with requests and
    candidates in time order (as training sorts them) and in any other order, items new
    to some requests, and the cold-dropout draw of training mode."""
    catalogue, log, calendar = world
    model = build(catalogue, calendar, replace(TINY, cold_dropout=0.5, **switches))
    windows = training_windows(log, TINY.max_length)[:12]
    batch = featurize(log, windows[:, :-1], log.timestamp[windows[:, -1]], calendar, 30.0)
    mask = batch.items != PAD
    days, events = batch.request_days[mask], batch.request_events[mask]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        low, high = float(days.min()), float(days.max())
        model.first_day[1:] = low + (high - low) * torch.rand(catalogue.size, generator=generator)
        for parameter in (model.item_bias.weight, model.calendar_offsets, model.new_item_bias):
            parameter.normal_(generator=generator)
        query = model.user_side(batch)[0][mask]
    slots = torch.arange(1, catalogue.size + 1)[torch.rand(catalogue.size) < 0.6]
    shift = torch.randn(len(slots), generator=generator)
    assert len(query) > 8 * 5  # several rows in every block
    by_time = torch.argsort(days), torch.argsort(model.first_day[slots])
    shuffled = torch.randperm(len(days)), torch.randperm(len(slots))
    for rows, columns in [by_time, shuffled]:
        torch.manual_seed(0)
        want = model.score(query[rows], slots[columns], events[rows], days[rows])
        torch.manual_seed(0)
        got = model.score_inner(
            query[rows], slots[columns], events[rows], days[rows], shift[columns]
        )
        np.testing.assert_allclose(got.detach(), (want + shift[columns]).detach(), atol=1e-5)
    unseen = model.first_day[slots] >= days[:, None]
    assert 0.1 < float(unseen.float().mean()) < 0.9  # both item states are scored


def test_serving_scores_match_the_training_path() -> None:
    """The fast full-catalogue `score` (whole-history repeat counts, one matrix product)
    equals the training computation (window + carried-in repeat counts, candidate scoring),
    also for histories longer than the window."""
    dataset = make_toy_world(n_users=40)
    split = split_dataset(dataset, "leave-one-out")
    config = tiny(model={"dropout": 0.1, "max_length": 4}, train={"epochs": 1})
    recommender = StarsRecommender(config).fit(TrainingData(split.train, split.catalogue, "GB"))
    queries = split.test
    assert queries.lengths.max() > 4

    model = recommender.model
    rows = query_windows(queries, 4)
    batch = featurize(queries.log, rows, queries.time, recommender.calendar, 30.0)
    slots = torch.arange(1, split.catalogue.size + 1)
    last = torch.zeros(rows.shape, dtype=torch.bool)
    last[:, -1] = True
    decay = recommender.config.model.repeat_basket_decay
    carried = carried_repeats(queries.log, rows, slots, 30.0, decay)
    repeats = history_repeats(batch, slots, last, carried, decay)
    with torch.no_grad():
        model.user_repeat.weight.normal_()  # a per-user part that matters in the check
        served = recommender.score(queries)
        query = model.user_side(batch)[0][:, -1]
        logits = model.score(query, slots, batch.request_events[:, -1])
        weights = model.user_repeat_weights(query)[repeats.rows]
        bonus = model.repeat_bonus(repeats.features, slots[repeats.columns], weights)
        logits = logits.index_put((repeats.rows, repeats.columns), bonus, accumulate=True)
    np.testing.assert_allclose(served, logits.numpy(), rtol=1e-5, atol=1e-5)


def test_training_repeat_counts_match_whole_history_counts() -> None:
    """Training's sparse repeat counts at every masked position of every window (the
    window's own events plus those carried in from before it) equal scoring's dense counts
    over the user's whole history up to that position, for the candidates sampled."""
    dataset = make_toy_world(n_users=30)
    split = split_dataset(dataset, "leave-one-out")
    log = split.train
    windows = training_windows(log, 3)
    inputs = windows[:, :-1]
    calendar = CalendarEvents.build("GB", 2019, 2021)
    batch = featurize(log, inputs, log.timestamp[windows[:, -1]], calendar, 30.0)
    generator = np.random.default_rng(0)
    slots = torch.from_numpy(np.unique(generator.integers(1, log.item.max() + 2, 40)))
    mask = (windows[:, 1:] >= 0) & (inputs >= 0) & (generator.random(inputs.shape) < 0.7)
    carried = carried_repeats(log, inputs, slots, 30.0, 0.7)
    assert (carried.slots != PAD).any(), "no window has history before it"
    rows, columns, (count, age, recent, sessions) = history_repeats(
        batch, slots, torch.from_numpy(mask), carried, 0.7
    )

    b, t = mask.nonzero()  # the reference: one whole-history query per masked position
    user = log.user[inputs[b, t]]
    reference = Queries(
        log, log.offsets[user], inputs[b, t] + 1, log.timestamp[windows[b, t + 1]], user
    )
    want_count, want_age, want_recent, want_sessions = history_counts(
        reference, log.item.max() + 1, 30.0, 0.7
    )
    columns_of_slots = slots.numpy() - 1
    dense_count = torch.zeros(len(b), len(slots)).index_put((rows, columns), count)
    dense_age = torch.full_like(dense_count, torch.inf).index_put((rows, columns), age)
    dense_recent = torch.zeros_like(dense_count).index_put((rows, columns), recent)
    assert count.min() >= 1 and len(rows) > len(slots)
    np.testing.assert_array_equal(dense_count.numpy(), want_count[:, columns_of_slots])
    np.testing.assert_allclose(dense_age.numpy(), want_age[:, columns_of_slots], atol=1e-2)
    np.testing.assert_allclose(dense_recent.numpy(), want_recent[:, columns_of_slots], rtol=1e-5)
    assert 0 < recent.min() < recent.max() == 1  # older sessions count less
    assert want_sessions.min() >= 1 and want_sessions.max() > 1
    np.testing.assert_array_equal(sessions.numpy(), want_sessions[rows.numpy()])


def test_score_calibration_keeps_the_best_validation_setting(world) -> None:
    """The search leaves the setting with the best validation metric, and no change
    (taste 1, offset 0, recent share 0, live and co-occurrence weights 0) when nothing beats
    it; the own-item values change own items' scores only, the live weights score recent
    sales, the co-occurrence weight log1p of similarity sums over the scale."""
    catalogue, _, calendar = world
    recommender = StarsRecommender(StarsConfig())
    recommender.model = build(catalogue, calendar).eval()
    model = recommender.model
    best = {"own_item_taste": 0.25, "own_item_offset": 4.0, "own_item_recent": 8.0}
    best |= {"live_1d": 0.25, "live_7d": 0.0, "live_new": 2.0}
    best |= {"cooccurrence_weight": 4.0, "cooccurrence_scale": 0.01}

    def peaked(m: STARS) -> float:
        return -sum(abs(float(v) - best[name]) for name, v in calibrated(m).items())

    recommender.calibrate_scores(peaked, own_items=True, live=True, cooccurrence=True)
    assert {name: float(v) for name, v in calibrated(model).items()} == pytest.approx(best)
    taste = torch.tensor([3.0, -1.0])  # an own item (recent share 0.5) and another
    decay = model.config.repeat_basket_decay
    recent = 0.5 * (1 + decay)  # of two baskets decayed alike: a recent share of 0.5
    repeats = RepeatFeatures(*torch.tensor([[1.0, 0.0], [1.0, np.inf], [recent, 0.0], [2.0, 2.0]]))
    adjusted = model.own_item_adjustment(taste, repeats)
    np.testing.assert_allclose(adjusted.numpy(), [0.25 * 3.0 - 3.0 + 4.0 + 8.0 * 0.5, 0.0])
    counts = torch.tensor([[3.0, 7.0], [3.0, 7.0], [0.0, 0.0]])  # (C, H) per half-life
    live = model.live_score(counts, torch.tensor([False, True, True]))
    want = [0.25 * np.log(4), 0.25 * np.log(4) + 2.0 * np.log(8), 0.0]
    np.testing.assert_allclose(live.numpy(), want, rtol=1e-6)
    together = model.cooccurrence_score(torch.tensor([0.0, 0.03]))
    np.testing.assert_allclose(together.numpy(), [0.0, 4.0 * np.log(4.0)], rtol=1e-6)
    recommender.calibrate_scores(lambda m: 0.5, own_items=True, live=True, cooccurrence=True)
    unchanged = {"own_item_taste": 1.0, "cooccurrence_scale": 0.01}  # weight 0: scale moot
    fitted = {name: float(v) for name, v in calibrated(model).items() if v}
    assert fitted == pytest.approx(unchanged)
    recommender.calibrate_scores(peaked, own_items=False, live=True, cooccurrence=False)
    assert float(model.own_item_taste) == 1.0 and float(model.live_weights[-1]) == 2.0
    assert float(model.cooccurrence_weight) == 0.0


def test_training_without_validation_keeps_the_trained_weights(world) -> None:
    """With no validation set the metric is -loss: every improvement must count (a bug once
    compared it with a -1 starting point and kept the untrained weights)."""
    catalogue, log, calendar = world
    model = build(catalogue, calendar)
    subclass = np.maximum(catalogue.subclass, 0).astype(np.int64)
    config = TrainConfig(epochs=3, batch_size=16, progress=False, patience=5)
    state = train_model(model, log, subclass, calendar, config)
    assert state.best_epoch >= 1
    assert state.history[-1]["loss"] < state.history[0]["loss"]


@pytest.mark.parametrize("allow_repeats", [True, False])
def test_new_item_bias_is_decided_by_the_kind_of_log(world, tmp_path, allow_repeats) -> None:
    """Left unset, the new-item bias is on for shop logs and off for rating logs (a film's
    first rating is not its release); the decision is saved with the model, and an
    explicit setting is kept."""
    catalogue, log, _ = world
    config = tiny(model={"dropout": 0.1}, train={"epochs": 1})
    data = TrainingData(log, catalogue, "GB", exclude_seen=not allow_repeats)
    decided = StarsRecommender(config).fit(data)
    assert decided.config.model.use_new_item_bias is allow_repeats
    loaded = StarsRecommender.load(decided.save(tmp_path / "artifact"))
    assert loaded.config.model.use_new_item_bias is allow_repeats
    explicit = replace(config, model=replace(TINY, use_new_item_bias=not allow_repeats))
    kept = StarsRecommender(explicit).fit(data)
    assert kept.config.model.use_new_item_bias is (not allow_repeats)


def test_a_config_written_by_an_earlier_version_loads() -> None:
    """config.json from before the calibration switches moved to StarsConfig.calibration and
    the shared cold bias was retired: the moved switches arrive where they now live, the
    retired field at its only served value is dropped, any other value is refused."""
    fields = dataclasses.asdict(tiny())
    old_model = {**fields["model"], "use_cold_bias": False, "use_own_item_calibration": False}
    config = StarsConfig(**{**fields, "model": old_model})
    assert config.model == tiny().model
    assert not config.calibration.own_items and config.calibration.new_items
    with pytest.raises(ValueError, match="use_cold_bias=True is no longer supported"):
        StarsConfig(**{**fields, "model": {**fields["model"], "use_cold_bias": True}})


def test_a_width_residual_trains_saves_and_loads(world, tmp_path) -> None:
    catalogue, log, _ = world
    config = tiny(model={"delta_space": "width"}, train={"epochs": 1})
    model = StarsRecommender(config).fit(TrainingData(log, catalogue, "GB"))
    delta = model._fitted_model().item_tokens.delta.weight
    assert delta.shape[1] == config.model.dim and delta.abs().sum() > 0  # it learned
    loaded = StarsRecommender.load(model.save(tmp_path / "artifact"))
    assert loaded.config.model.delta_space == "width"
    vectors = [m._fitted_model().item_vectors().detach() for m in (model, loaded)]
    np.testing.assert_array_equal(*vectors)


def test_rowwise_adagrad_moves_only_touched_rows_with_one_value_per_row() -> None:
    table = torch.nn.Parameter(torch.ones(5, 3))
    optimizer = RowWiseAdagrad([table], lr=0.1, weight_decay=0.5)
    table.grad = torch.zeros(5, 3)
    table.grad[1] = torch.tensor([3.0, 0.0, 0.0])  # mean square 3
    table.grad[4] = torch.tensor([1.0, 1.0, 1.0])  # mean square 1
    optimizer.step()
    state = optimizer.state[table]["sum"]
    assert state.shape == (5,) and state.tolist() == [0.0, 3.0, 0.0, 0.0, 1.0]
    decayed = 1 - 0.1 * 0.5
    expected = torch.ones(5, 3)
    expected[1] = decayed - 0.1 / 3**0.5 * torch.tensor([3.0, 0.0, 0.0])
    expected[4] = decayed - 0.1 / 1.0 * torch.ones(3)
    torch.testing.assert_close(table.detach(), expected)  # rows 0, 2, 3 untouched, not decayed
    with pytest.raises(ValueError, match="item_optimizer must be one of"):
        TrainConfig(item_optimizer="sgd")


def test_the_rowwise_optimiser_keeps_one_state_value_per_item(world) -> None:
    catalogue, _, calendar = world
    model = build(catalogue, calendar)
    items = catalogue.size + 1
    optimizer = stars_optimizer(model, items, "rowwise-adagrad", 1e-3, 0.01, 0.1)
    adamw, rowwise = optimizer.optimizers
    tables = {id(p) for g in rowwise.param_groups for p in g["params"]}
    named = {n for n, p in model.named_parameters() if id(p) in tables}
    assert named == {"item_tokens.delta.weight", "item_bias.weight", "item_repeat.weight"}
    assert not any(p.ndim and p.shape[0] == items for g in adamw.param_groups for p in g["params"])


def test_next_basket_pairs_join_each_session_opener_with_its_basket() -> None:
    """Requests that open a session are paired with every masked position up to the next
    opener (their basket's lines); positions whose opener is unmasked or before the window
    get none."""
    new_session = torch.tensor(
        [[True, False, False, True, False], [False, False, True, False, False]]
    )
    mask = torch.tensor([[True, True, True, True, True], [True, True, True, True, False]])
    openers, members = next_baskets(new_session, mask)
    # mask order: window 0 is 0..4, window 1 is 5..8 (its last position unmasked)
    pairs = sorted(zip(openers.tolist(), members.tolist(), strict=True))
    assert pairs == [(0, 0), (0, 1), (0, 2), (3, 3), (3, 4), (7, 7), (7, 8)]
    mask[0, 3] = False  # the second basket's opener has no target: no pairs for it
    openers, members = next_baskets(new_session, mask)
    assert sorted(zip(openers.tolist(), members.tolist(), strict=True))[:4] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (6, 6),
    ]


def test_basket_loss_is_the_mean_log_softmax_over_the_baskets_distinct_items() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]])
    per_event = torch.tensor([9.0, 7.0])  # row 1 opens no basket: kept
    loss = basket_loss(logits, per_event, torch.tensor([0, 0, 0]), torch.tensor([1, 2, 2]))
    want = torch.logsumexp(logits[0], 0) - (2.0 + 0.5) / 2
    np.testing.assert_allclose(loss.numpy(), [float(want), 7.0], rtol=1e-6)


def test_next_basket_loss_is_next_item_loss_when_every_request_opens_a_basket(world) -> None:
    """With one line per session each opener's basket is its own target: the same loss."""
    catalogue, log, calendar = world
    model = build(catalogue, calendar).eval()
    windows = training_windows(log, 6)[:8]
    inputs, target_rows = windows[:, :-1], windows[:, 1:]
    batch = featurize(log, inputs, log.timestamp[target_rows[:, -1]], calendar, 30.0)
    batch.new_session = torch.ones_like(batch.new_session)
    safe = np.maximum(target_rows, 0)
    valid = (target_rows >= 0) & (inputs >= 0)
    slots = torch.from_numpy(np.unique(slot_of(log.item)))
    carried = carried_repeats(log, inputs, slots, 30.0, 0.8)
    arrays = (log.item[safe], valid, np.ones(valid.shape, np.float32))
    args = (batch, carried, *map(torch.from_numpy, arrays), slots, torch.zeros(len(slots)))
    with torch.no_grad():
        plain, basket = (training_loss(model, *args, next_basket_loss=b) for b in (False, True))
        torch.testing.assert_close(plain, basket)
        batch.new_session[:, ::2] = False  # now baskets of two lines: a different loss
        assert not torch.isclose(training_loss(model, *args, next_basket_loss=True), plain)
