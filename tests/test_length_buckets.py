"""Batches of windows of similar length (`TrainConfig.length_buckets`, issue 21): every
window once per epoch, similar lengths per batch, and a trimmed batch scored as untrimmed."""

from __future__ import annotations

import numpy as np
import torch

from starsrec.data.splits import split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.recommender import TrainingData
from starsrec.stars.loss import LossModule
from starsrec.stars.recommender import StarsRecommender
from starsrec.stars.sequences import training_windows
from starsrec.stars.train import Sampler, TrainConfig, _host_steps, by_length
from tiny import built_toy_model, tiny


def test_by_length_batches_every_window_once_with_similar_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 51, 1000)
    order = rng.permutation(1000)
    batches = by_length(order, lengths, chunk=200, size=32, rng=np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    shuffled = np.mean([np.ptp(lengths[order[lo : lo + 32]]) for lo in range(0, 1000, 32)])
    assert spread < shuffled / 3  # each batch's lengths close together


def test_a_trimmed_batch_scores_as_the_untrimmed_one() -> None:
    """Positions count back from the latest event: dropping the padding every window of a
    batch has changes no loss (eval mode: no dropout draws)."""
    catalogue, log, calendar, model = built_toy_model()
    windows = training_windows(log, 16)
    lengths = (windows >= 0).sum(axis=1)
    short = np.flatnonzero(lengths < 12)[:24]  # a batch whose windows all have padding
    assert len(short) > 4
    subclass = np.zeros(catalogue.size, np.int64)
    losses = []
    for buckets in (0, 1):
        config = TrainConfig(uniform_negatives=8, subclass_negatives=8, length_buckets=buckets)
        sampler = Sampler(log, subclass, config)
        rng = np.random.default_rng(0)
        ((batch, carried, *tensors), count), *_ = _host_steps(
            log, windows, [short], sampler, calendar, model, config, rng
        )
        assert batch.items.shape[1] == (16 if buckets == 0 else lengths[short].max() - 1)
        with torch.no_grad():
            losses.append(float(LossModule(model)(batch, carried, *tensors)))
        assert count == int(tensors[1].sum())  # the target events, trimmed or not
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_training_with_length_buckets_runs() -> None:
    split = split_dataset(make_toy_world(n_users=60), "leave-one-out")
    config = tiny(train={"epochs": 2, "length_buckets": 4, "batch_size": 16})
    model = StarsRecommender(config).fit(TrainingData(split.train, split.catalogue, "GB"))
    assert model.training_state is not None and len(model.training_state.history) == 2
    assert np.isfinite(model.score(split.test)).any()
