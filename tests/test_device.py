"""Training and scoring on a device (`starsrec.stars.device`): `--device cpu` trains what the
default does without a GPU, bit for bit; bf16 autocast keeps the loss in float32; the host
helpers keep order and numbers; and a model trained on a GPU saves, loads and resumes on the
CPU (where torch sees a GPU)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from starsrec.cli import main
from starsrec.data.calendar import CalendarEvents
from starsrec.data.interactions import Catalogue, EventLog
from starsrec.data.splits import split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.recommender import TrainingData
from starsrec.stars.device import (
    mixed_precision,
    prefetched,
    resolve_device,
    reused_host_memory,
    to_device,
)
from starsrec.stars.loss import LossModule
from starsrec.stars.recommender import StarsRecommender
from starsrec.stars.repeats import carried_repeats
from starsrec.stars.sequences import featurize, training_windows
from starsrec.stars.train import Sampler, TrainConfig, train_model
from tiny import tiny


@pytest.fixture(scope="module")
def split():
    return split_dataset(make_toy_world(n_users=60), "leave-one-out")


def fit(split, **train) -> StarsRecommender:
    config = tiny(model={"dropout": 0.1}, train={"epochs": 2, **train})
    data = TrainingData(split.train, split.catalogue, "GB")
    return StarsRecommender(config).fit(data)


def test_cpu_trains_the_same_weights_as_the_default_without_a_gpu(split, monkeypatch) -> None:
    """`--device cpu` and the default ("auto", on a machine made to look GPU-less) give the
    same weights and scores, bit for bit."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    default = fit(split)
    on_cpu = fit(split, device="cpu")
    assert default.device == on_cpu.device == torch.device("cpu")
    for key, value in default.model.state_dict().items():
        assert torch.equal(value, on_cpu.model.state_dict()[key]), key
    np.testing.assert_array_equal(default.score(split.test), on_cpu.score(split.test))


def test_devices_are_resolved_or_refused_by_name(monkeypatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="torch sees no GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="use one of auto, cpu, cuda"):
        resolve_device("tpu")
    host = torch.arange(3)
    assert to_device(host, torch.device("cpu")) is host  # the CPU path copies nothing
    assert not isinstance(mixed_precision(torch.device("cpu")), torch.autocast)  # float32


def test_prefetching_keeps_the_order_and_raises_where_the_producer_failed() -> None:
    """What overlaps host work with a GPU's (`prefetched`, the training steps on CUDA):
    the items in their order, at most `depth` produced ahead, the producer's error raised
    at the item it failed on."""
    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    stream = prefetched(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.1)
    assert len(produced) <= 4  # the one taken, two queued, one waiting to be queued
    assert list(stream) == list(range(1, 50))

    def failing():
        yield 1
        raise RuntimeError("bad batch")

    stream = prefetched(failing())
    assert next(stream) == 1
    with pytest.raises(RuntimeError, match="bad batch"):
        next(stream)


def test_reused_host_memory_changes_no_numbers() -> None:
    """Training's epochs run inside `reused_host_memory` (glibc keeps freed blocks): only
    where memory comes from changes, and it can be entered again."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(600, 81, generator=generator), torch.randn(81, 3000, generator=generator)
    plain = torch.log_softmax(a @ b, dim=1)
    for _ in range(2):
        with reused_host_memory():
            assert torch.equal(torch.log_softmax(a @ b, dim=1), plain)


def test_train_refuses_a_gpu_it_cannot_see(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = main(["train", str(tmp_path), "--device", "cuda", "--out", str(tmp_path / "a")])
    assert status == 2 and "torch sees no GPU" in capsys.readouterr().err


def test_the_loss_under_bf16_autocast_is_float32_and_close() -> None:
    """What CUDA training runs, checked on the CPU's bf16 autocast: the loss and the sparse
    repeat bonus added into the logits stay float32, and the loss moves by bf16 rounding
    only."""
    world = make_toy_world(n_users=40)
    catalogue = Catalogue.from_items(world.items)
    log = EventLog.from_dataset(world, catalogue)
    calendar = CalendarEvents.build("GB", 2023, 2025)
    recommender = StarsRecommender(tiny())
    recommender.features = {
        "text": np.random.default_rng(0).normal(size=(catalogue.size, 12)).astype(np.float32),
        "tags": np.zeros((catalogue.size, 3), np.float32),
        "item_class": np.zeros(catalogue.size, np.int64),
        "warm": np.ones(catalogue.size, np.float32),
    }
    recommender.calendar = calendar
    model = recommender._build().eval()
    windows = training_windows(log, 8)[:16]
    inputs, target_rows = windows[:, :-1], windows[:, 1:]
    batch = featurize(log, inputs, log.timestamp[target_rows[:, -1]], calendar, 30.0)
    safe = np.maximum(target_rows, 0)
    valid = (target_rows >= 0) & (inputs >= 0) & log.is_target[safe]
    subclass = np.zeros(catalogue.size, np.int64)
    sampler = Sampler(log, subclass, TrainConfig(uniform_negatives=8, subclass_negatives=8))
    candidates, log_q = sampler.sample(log.item[safe][valid], np.random.default_rng(0))
    slots = torch.from_numpy(candidates + 1)
    carried = carried_repeats(log, inputs, slots, 30.0, 0.8)
    arrays = (log.item[safe], valid, log.weight[safe].astype(np.float32), candidates + 1)
    args = (batch, carried, *map(torch.from_numpy, arrays), torch.from_numpy(log_q).float())
    step = LossModule(model)
    with torch.no_grad():
        full = step(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = step(*args)
    assert full.dtype == mixed.dtype == torch.float32
    assert torch.isfinite(mixed) and abs(float(mixed) - float(full)) < 0.05 * abs(float(full))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no GPU here")
def test_trained_on_a_gpu_it_loads_scores_and_resumes_on_the_cpu(split, tmp_path) -> None:
    """Trained on CUDA (bf16 autocast), saved, loaded on the CPU: the same scores within
    bf16 tolerance; a checkpoint written on the GPU resumes on the CPU."""
    trained = fit(split, device="cuda")
    assert trained.device.type == "cuda"
    loaded = StarsRecommender.load(trained.save(tmp_path / "artifact"))
    assert loaded.device == torch.device("cpu")
    on_gpu, on_cpu = trained.score(split.test), loaded.score(split.test)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-2, atol=1e-2)

    checkpoints = tmp_path / "checkpoints"
    config = TrainConfig(epochs=1, batch_size=16, progress=False)
    subclass = np.zeros(split.catalogue.size, np.int64)
    calendar = trained.calendar
    gpu_model = trained._build().to("cuda")
    train_model(gpu_model, split.train, subclass, calendar, config, None, checkpoints)
    cpu_model = trained._build()
    state = train_model(
        cpu_model,
        split.train,
        subclass,
        calendar,
        dataclasses.replace(config, epochs=2),
        None,
        checkpoints,
    )
    assert state.epoch == 2 and len(state.history) == 2
