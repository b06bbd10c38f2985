"""LambdaMART with the item text STARS gets: text candidates and features, text-derived
classes, candidate recall, and artifacts saved before text still loading as they were."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from starsrec.baselines.lambdamart import LambdaMARTRecommender, smoothed_best
from starsrec.baselines.text_profile import item_text, text_similarities
from starsrec.data.dataset import EventType
from starsrec.data.files import STATE_FILE
from starsrec.data.interactions import Queries
from starsrec.data.splits import split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.experiments.report import training_data
from tiny import TINY_LAMBDAMART


@pytest.fixture(scope="module")
def data():
    dataset = make_toy_world(n_users=80)
    return training_data(dataset, split_dataset(dataset, "leave-one-out"), exclude_seen=False)


def test_text_similarities_are_the_cosines_with_the_profile_and_the_last_item() -> None:
    text = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    queries = Queries.from_histories([[0, 0, 1], [], [2]], (EventType("buy"),))
    profile, last = text_similarities(text, queries, history=2)  # the last two: items 0, 1
    expected = np.array([1.0, 1.0, 1.4]) / np.sqrt(2)
    np.testing.assert_allclose(profile[0], expected, rtol=1e-6)
    np.testing.assert_allclose(last[0], text @ text[1], rtol=1e-6)
    assert not profile[1].any() and not last[1].any()  # no history, no similarity
    np.testing.assert_allclose(profile[2], text @ text[2], rtol=1e-6)
    empty = text_similarities(np.zeros((3, 0), np.float32), queries, history=2)
    assert all(not part.any() for part in empty)


def test_text_adds_candidates_and_two_features(data) -> None:
    with_text = LambdaMARTRecommender(TINY_LAMBDAMART).fit(data)
    without = LambdaMARTRecommender(replace(TINY_LAMBDAMART, text_encoder=None)).fit(data)
    queries = data.validation
    assert with_text.generators is not None and without.generators is not None
    more, fewer = with_text.generators.candidates(queries), without.generators.candidates(queries)
    assert (more >= fewer).all() and more.sum() > fewer.sum()  # text only adds candidates
    width = with_text.generators.candidates_and_features(queries)[2].shape[1]
    assert width == without.generators.candidates_and_features(queries)[2].shape[1] + 2
    np.testing.assert_array_equal(with_text.generators.subclass, data.catalogue.subclass)


def test_a_catalogue_without_taxonomy_gets_classes_from_its_texts(data) -> None:
    """As STARS derives them (`catalogue_groups`), so both models know the same classes."""
    catalogue = data.catalogue
    none = np.full(catalogue.size, -1, np.int32)
    bare = replace(catalogue, subclass=none, item_class=none)
    _, subclass, item_class = item_text(bare, "hashing", None, (8, 3))
    assert len(np.unique(subclass)) == 8 and len(np.unique(item_class)) == 3
    text, own_subclass, _ = item_text(catalogue, None, None, (8, 3))
    assert text.shape == (catalogue.size, 0)
    np.testing.assert_array_equal(own_subclass, catalogue.subclass)


def test_candidate_recall_counts_the_targets_among_the_candidates(data) -> None:
    model = LambdaMARTRecommender(TINY_LAMBDAMART).fit(data)
    queries, targets = data.validation, data.validation_targets
    assert model.generators is not None
    candidates = model.generators.candidates(queries)
    owner = np.repeat(np.arange(len(queries)), targets.sizes)
    expected = candidates[owner, targets.items].mean()
    assert model.diagnostics(queries, targets)["candidate_recall"] == pytest.approx(expected)
    assert 0.0 < expected <= 1.0


def test_an_artifact_saved_before_text_scores_as_it_was_trained(data, tmp_path) -> None:
    """A state without text, classes or subclasses (saved before them) loads without text
    features, so its booster gets the columns it was trained on."""
    model = LambdaMARTRecommender(replace(TINY_LAMBDAMART, text_encoder=None)).fit(data)
    path = model.save(tmp_path / "old")
    state = load_file(path / STATE_FILE)
    for name in ("text", "item_class", "subclass"):
        del state[name]
    save_file(state, path / STATE_FILE)
    meta = path / "meta.json"
    meta.unlink()  # its checksums name the old state file: an unchecked artifact is loaded
    loaded = LambdaMARTRecommender.load(path)
    np.testing.assert_array_equal(loaded.score(data.validation), model.score(data.validation))


def test_the_tree_count_is_the_best_of_the_smoothed_validation_curve() -> None:
    """A lone spike (round 2) loses to a steady plateau (rounds 5-7); 1-based rounds."""
    curve = [0.10, 0.30, 0.11, 0.20, 0.25, 0.26, 0.25, 0.12]
    assert smoothed_best(curve, 1) == 2  # no smoothing: the spike
    assert smoothed_best(curve, 3) == 6
    assert smoothed_best([], 3) == 0
