"""Calibration after training: the maximum-likelihood new-item offset and the grid search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from starsrec.stars.calibration import (
    MIN_NEW_ITEM_TARGETS,
    coordinate_search,
    new_item_log_odds,
    new_item_offset,
)


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


def test_coordinate_search_finds_the_best_setting_block_by_block() -> None:
    """The second block's best depends on the first block's choice, so it takes a second
    round; it ends at the best setting, left applied, with fewer validations than the
    whole grid."""
    applied: list[tuple[float, ...]] = []

    def metric() -> float:  # best at (2, 1, 3); z's best follows x
        x, y, z = applied[-1]
        return -((x - 2) ** 2) - (y - 1) ** 2 - (z - x - 1) ** 2 / 4

    pairs = [(x, y) for x in (0.0, 1.0, 2.0, 3.0) for y in (0.0, 1.0, 2.0)]
    best = coordinate_search("xyz", metric, (pairs, [(z,) for z in range(6)]), applied.append)
    assert best == (2.0, 1.0, 3.0) and applied[-1] == best
    assert len(applied) < len(pairs) * 6


def test_coordinate_search_keeps_the_first_entries_unless_another_is_strictly_better() -> None:
    applied: list[tuple[float, ...]] = []
    blocks = ([(1.0,), (0.5,)], [(0.0, 1.0), (2.0, 3.0)])
    assert coordinate_search("ties", lambda: 0.5, blocks, applied.append) == (1.0, 0.0, 1.0)
    assert applied[-1] == (1.0, 0.0, 1.0)
