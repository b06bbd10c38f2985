"""Calibration after training: the maximum-likelihood new-item offset and the grid search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from starsrec.data.baskets import BasketTargets
from starsrec.data.calendar import CalendarEvents
from starsrec.data.splits import split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.serving.product_tokens import new_product_bias
from starsrec.stars.calibration import (
    MIN_NEW_ITEM_TARGETS,
    grid_search,
    new_item_log_odds,
    new_item_offset,
)
from starsrec.stars.recommender import StarsConfig, StarsRecommender
from test_model import TINY, build


def mean_new_item_mass(scores: np.ndarray, new_items: np.ndarray) -> float:
    probabilities = torch.softmax(torch.from_numpy(scores).double(), dim=1).numpy()
    return float(probabilities[:, new_items].sum(axis=1).mean())


def mean_log_likelihood(scores: np.ndarray, targets: np.ndarray) -> float:
    log_p = torch.log_softmax(torch.from_numpy(scores).double(), dim=1).numpy()
    return float(log_p[np.arange(len(targets)), targets].mean())


def test_new_item_offset_is_the_maximum_likelihood_offset() -> None:
    """After the offset the model's mean probability on new items is the share of targets
    that are new items, and no nearby offset has a higher validation log-likelihood."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(300, 40)).astype(np.float32)
    new_items = np.zeros(40, dtype=bool)
    new_items[:6] = True
    targets = np.where(rng.random(300) < 0.2, rng.integers(0, 6, 300), rng.integers(6, 40, 300))
    scores[:5, 7] = -np.inf  # filtered items count for nothing
    offset = new_item_offset(new_item_log_odds(scores, new_items), new_items[targets])

    shifted = scores + offset * new_items
    assert mean_new_item_mass(shifted, new_items) == pytest.approx(new_items[targets].mean())
    best = mean_log_likelihood(shifted, targets)
    for step in (-0.05, 0.05):
        assert best > mean_log_likelihood(shifted + step * new_items, targets)


def test_new_item_offset_needs_enough_new_item_targets() -> None:
    """Too few new-item targets to estimate their share, or a query that may return no new
    item at all, are not fitted on."""
    scores = np.zeros((50, 10), dtype=np.float32)
    new_items = np.arange(10) < 3
    few = np.zeros(50, dtype=bool)
    few[: MIN_NEW_ITEM_TARGETS - 1] = True
    assert new_item_offset(new_item_log_odds(scores, new_items), few) is None
    scores[:, :3] = -np.inf  # no new item can be returned: the log-odds are -inf
    log_odds = new_item_log_odds(scores, new_items)
    assert np.isneginf(log_odds).all()
    assert new_item_offset(log_odds, np.ones(50, dtype=bool)) is None


def test_grid_search_keeps_the_first_setting_unless_another_is_strictly_better() -> None:
    metric = {"a": 0.5, "b": 0.5, "c": 0.7, "d": 0.6}
    applied = []
    best = grid_search("letters", lambda: metric[applied[-1]], list("abcd"), applied.append)
    assert best == "c" and applied[-1] == "c"  # the winner is left applied
    applied.clear()
    assert grid_search("ties", lambda: 0.5, list("ab"), applied.append) == "a"
    assert applied[-1] == "a"


def test_calibrate_new_items_moves_the_bias_of_new_items_only() -> None:
    """On a toy shop whose validation targets are partly items without training events,
    calibration shifts exactly those items' bias (what the index and the service serve),
    and the model's probability on them becomes their share of the targets."""
    dataset = make_toy_world(n_users=60)
    split = split_dataset(dataset, "leave-one-out")
    catalogue = split.catalogue
    # The items most often asked for in validation are the ones without training events.
    popular = np.argsort(-np.bincount(split.validation_target, minlength=catalogue.size))
    warm = np.ones(catalogue.size, dtype=bool)
    warm[popular[:8]] = False
    assert (~warm[split.validation_target]).sum() >= MIN_NEW_ITEM_TARGETS

    recommender = StarsRecommender(StarsConfig(model=TINY))
    recommender.catalogue = catalogue
    recommender.calendar = CalendarEvents.build("GB", 2023, 2025)
    recommender.features = {"warm": warm.astype(np.float32)}
    recommender.model = build(catalogue, recommender.calendar, warm=torch.from_numpy(warm)).eval()
    model = recommender.model
    before = model.item_biases().detach().numpy().copy()

    targets = BasketTargets.single(split.validation_target)
    recommender.calibrate_new_items(split.validation, targets, exclude_seen=False)

    moved = model.item_biases().detach().numpy() - before
    assert moved[warm] == pytest.approx(0.0)
    assert np.ptp(moved[~warm]) == pytest.approx(0.0, abs=1e-6) and moved[~warm][0] > 0
    assert new_product_bias(model) == pytest.approx(before[~warm][0] + moved[~warm][0])
    scores = recommender.score(split.validation)
    share = (~warm[split.validation_target]).mean()
    assert mean_new_item_mass(scores, ~warm) == pytest.approx(share, abs=1e-4)
