"""Training STARS: next-event prediction with a sampled softmax (DESIGN 1.4).

At every position the model predicts the next target event (or, with `next_basket_loss`,
where the next event opens a new session, the whole next basket: `starsrec.stars.loss`).
The softmax runs over the batch's own targets (in-batch negatives), `uniform_negatives`
items drawn uniformly and `subclass_negatives` hard negatives drawn from the subclasses of
the batch's targets, with the log-Q correction: each candidate's logit is reduced by the
log of how often the sampler proposes it, so popular items are not over-penalised.
Positives are weighted by their event type's engagement weight. AdamW, early stopping on
validation NDCG@10, a checkpoint after every epoch that resumes exactly (model, optimiser,
RNG states), on the device it was written on, and validly on any other.

Under torchrun (world size W > 1) the same loop runs as DistributedDataParallel: every
rank draws the same shuffled epoch order from the shared seeded generator, takes every
W-th window of each global batch (so a step covers the same `batch_size` windows as one
process does), samples its negatives and dropout from a stream derived from (seed, epoch,
rank), and DDP averages the gradients (NCCL on GPUs, gloo on the CPU). Rank 0 validates
and broadcasts the metric, so early stopping is decided once; rank 0 alone writes
checkpoints (`starsrec.stars.checkpoint`). The checkpoint holds the
same tensors at any world size: resuming at the same W is bit-exact, at another W valid
(the model, optimiser and epoch carry over; the negative samples differ).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from starsrec.data.calendar import CalendarEvents
from starsrec.data.interactions import EventLog
from starsrec.stars import distributed
from starsrec.stars.batch import slot_of
from starsrec.stars.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from starsrec.stars.device import mixed_precision, prefetched, reused_host_memory, to_device
from starsrec.stars.loss import LossModule
from starsrec.stars.model import STARS
from starsrec.stars.optim import OPTIMIZERS, Optimizers, stars_optimizer
from starsrec.stars.repeats import carried_repeats
from starsrec.stars.sequences import featurize, training_windows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, sampling and early-stopping settings."""

    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 5e-3
    weight_decay: float = 0.01
    delta_weight_decay: float = 0.1  # pulls the per-item residuals towards the text vector
    # "adamw" for every parameter, or "rowwise-adagrad" for the item tables (one optimiser
    # value per item; starsrec.stars.optim) at `item_learning_rate` (None: learning_rate).
    # Row-wise Adagrad needs the larger step; both chosen on validation (issue 21).
    item_optimizer: str = "rowwise-adagrad"
    item_learning_rate: float | None = 0.05
    uniform_negatives: int = 256
    subclass_negatives: int = 256
    patience: int = 8
    # At requests that open a new session, predict the next basket's items, not only its
    # first line (`starsrec.stars.loss`). Off: no gain on validation (docs/benchmarks.md).
    next_basket_loss: bool = False
    threads: int = 1
    seed: int = 0
    progress: bool = True
    # "auto" (a GPU when torch sees one, else the CPU), "cpu", "cuda" or "cuda:N"
    # (starsrec.stars.device). Only where training runs: results load on any device.
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.item_optimizer not in OPTIMIZERS:
            choices, got = ", ".join(OPTIMIZERS), self.item_optimizer
            raise ValueError(f"item_optimizer must be one of {choices}, got {got!r}")


class Sampler:
    """Candidate sets with their log-Q corrections for one batch."""

    def __init__(self, log: EventLog, subclass: np.ndarray, config: TrainConfig) -> None:
        n_items = len(subclass)
        target = log.is_target
        counts = np.bincount(log.item[target], minlength=n_items).astype(np.float64)
        self.popularity = counts / max(counts.sum(), 1.0)
        order = np.argsort(subclass, kind="stable")
        self.by_subclass = order  # items grouped by subclass
        sizes = np.bincount(subclass, minlength=int(subclass.max()) + 1)
        self.subclass_start = np.concatenate([[0], np.cumsum(sizes)])[subclass]
        self.subclass_size = sizes[subclass]
        subclass_popularity = np.bincount(subclass, weights=self.popularity)
        # Probability a hard negative is item c: its subclass is drawn like a target's
        # (by popularity), then an item uniformly inside it.
        self.hard_probability = subclass_popularity[subclass] / np.maximum(self.subclass_size, 1)
        self.subclass = subclass
        self.n_items = n_items
        self.config = config

    def sample(
        self, targets: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(C,) sorted unique candidate item indices and (C,) log expected draw counts."""
        config = self.config
        uniform = rng.integers(0, self.n_items, config.uniform_negatives)
        anchors = targets[rng.integers(0, len(targets), config.subclass_negatives)]
        offsets = (rng.random(len(anchors)) * self.subclass_size[anchors]).astype(np.int64)
        hard = self.by_subclass[self.subclass_start[anchors] + offsets]
        candidates = np.unique(np.concatenate([targets, uniform, hard]))
        expected = (
            len(targets) * self.popularity[candidates]
            + config.uniform_negatives / self.n_items
            + config.subclass_negatives * self.hard_probability[candidates]
        )
        return candidates, np.log(expected)


def train_model(
    model: STARS,
    log: EventLog,
    subclass: np.ndarray,
    calendar: CalendarEvents,
    config: TrainConfig,
    validate: Callable[[STARS], float] | None = None,
    checkpoint_dir: Path | None = None,
) -> TrainingState:
    """Train `model` in place on `log`, on the device the model is on (bf16 autocast on a
    GPU, `starsrec.stars.device`); keeps the weights of the best validation epoch.

    In a process group (see module doc) every rank calls this with the same arguments;
    `validate` runs on rank 0 only and `checkpoint_dir` must be readable by every rank."""
    rank = distributed.current()
    device = model.device
    torch.set_num_threads(1 if rank.distributed else config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)  # the epoch order: identical on every rank
    length = model.config.max_length
    windows = training_windows(log, length)
    sampler = Sampler(log, subclass, config)
    optimizer = stars_optimizer(
        model,
        len(model.item_tokens.warm),
        config.item_optimizer,
        config.learning_rate,
        config.weight_decay,
        config.delta_weight_decay,
        config.item_learning_rate,
    )
    step: nn.Module = LossModule(model, config.next_basket_loss)
    if rank.distributed:
        # Buffers (frozen text vectors, tags) are the same on every rank and never change:
        # syncing them every forward would be pure traffic. Switched-off components leave
        # parameters without gradients, which DDP must be told to expect.
        step = DistributedDataParallel(
            step,
            device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False,
            find_unused_parameters=True,
        )
    state = TrainingState(history=[])
    best_weights = _host_copy(model)
    if checkpoint_dir is not None and (checkpoint_dir / "trainer.json").exists():
        state, rng = load_checkpoint(checkpoint_dir, model, optimizer, best_weights)
        logger.info("resumed from %s at epoch %d", checkpoint_dir, state.epoch)
    logger.info(
        "training on %d windows of up to %d events on %s, %s", len(windows), length, device, rank
    )
    while state.epoch < config.epochs and state.stale_epochs < config.patience:
        started = time.perf_counter()
        sample_rng = rng
        if rank.distributed:
            # Per-rank streams derived from the epoch, so a checkpoint need not hold them.
            sample_rng = np.random.default_rng([config.seed, state.epoch, rank.rank])
            torch.manual_seed(int(sample_rng.integers(2**62)))
        loss, events = _epoch(
            step,
            model,
            log,
            windows,
            sampler,
            calendar,
            optimizer,
            (rng, sample_rng),
            config,
            state,
        )
        loss_sum, events_sum = distributed.all_reduce_sum([loss * events, events])
        loss, events = loss_sum / max(events_sum, 1), int(events_sum)
        seconds = time.perf_counter() - started  # training only, validation excluded
        if validate is None:
            metric = -loss
        else:
            metric = distributed.broadcast_float(validate(model) if rank.is_main else 0.0)
        state.epoch += 1
        if metric > state.best_metric:
            state.best_metric, state.best_epoch, state.stale_epochs = metric, state.epoch, 0
            best_weights = _host_copy(model)
        else:
            state.stale_epochs += 1
        state.history.append(
            {
                "epoch": state.epoch,
                "loss": loss,
                "validation": metric,
                "events": events,
                "seconds": round(seconds, 3),
            }
        )
        logger.info(
            "epoch %d: loss %.4f, validation ndcg@10 %.4f, %.0f events/s",
            state.epoch,
            loss,
            metric,
            events / seconds,
        )
        if checkpoint_dir is not None:
            if rank.is_main:
                save_checkpoint(checkpoint_dir, model, optimizer, state, rng, best_weights)
            distributed.barrier()  # no rank runs ahead of a checkpoint it may resume from
    model.load_state_dict(best_weights)
    model.eval()
    return state


def _host_copy(model: STARS) -> dict[str, torch.Tensor]:
    """A copy of the model's state in host memory (the best weights, kept off the GPU)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _epoch(
    step: nn.Module,
    model: STARS,
    log: EventLog,
    windows: np.ndarray,
    sampler: Sampler,
    calendar: CalendarEvents,
    optimizer: torch.optim.Optimizer | Optimizers,
    rngs: tuple[np.random.Generator, np.random.Generator],  # epoch order, negatives
    config: TrainConfig,
    state: TrainingState,
) -> tuple[float, int]:
    """One pass over this rank's share of the windows: (mean loss, target events)."""
    model.train()
    rank, device = distributed.current(), model.device
    order_rng, sample_rng = rngs
    order = order_rng.permutation(len(windows))
    steps = _host_steps(log, windows, order, sampler, calendar, model, config, sample_rng)
    if device.type == "cuda":  # the next steps' host work overlaps this one's on the GPU
        steps = prefetched(steps, depth=2)
    # Summed on the device in float64, as Python floats would be: no wait for the GPU per step.
    total_loss, total_events = torch.zeros((), dtype=torch.float64, device=device), 0
    show = config.progress and rank.is_main
    total = math.ceil(len(order) / config.batch_size)
    bar = tqdm(steps, total=total, desc=f"epoch {state.epoch + 1}", disable=not show)
    with reused_host_memory():
        for (batch, carried, *tensors), events in bar:
            on_device = [to_device(t, device) for t in tensors]
            with mixed_precision(device):
                loss = step(batch.to(device), carried.to(device), *on_device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total_loss += loss.detach().double() * events
            total_events += events
            if show:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return total_loss.item() / max(total_events, 1), total_events


def _host_steps(
    log: EventLog,
    windows: np.ndarray,
    order: np.ndarray,
    sampler: Sampler,
    calendar: CalendarEvents,
    model: STARS,
    config: TrainConfig,
    sample_rng: np.random.Generator,
) -> Iterator[tuple[tuple, int]]:
    """Each step's `training_loss` arguments after the model, in host memory, and its target
    events: this rank's share of each batch of `order`, its features, negatives and
    carried-in repeats. Vectorised over the batch's events (no Python loop over them)."""
    rank = distributed.current()
    # A window can predict something when a position has an input and a target event.
    targets_ok = (windows[:, 1:] >= 0) & log.is_target[np.maximum(windows[:, 1:], 0)]
    useful = (targets_ok & (windows[:, :-1] >= 0)).any(axis=1)
    gap = model.config.session_gap_minutes
    for lo in range(0, len(order), config.batch_size):
        chosen = order[lo : lo + config.batch_size]
        # Every rank decides alike whether the step happens (DDP needs all or none); at
        # world size 1 this is the batch having any target.
        shares = [chosen[r :: rank.world_size] for r in range(rank.world_size)]
        if not all(useful[share].any() for share in shares):
            continue
        window = windows[shares[rank.rank]]  # (B / W, T+1)
        inputs, target_rows = window[:, :-1], window[:, 1:]
        batch = featurize(log, inputs, log.timestamp[target_rows[:, -1]], calendar, gap)
        valid = (target_rows >= 0) & (inputs >= 0)
        safe = np.maximum(target_rows, 0)
        valid &= log.is_target[safe]
        targets = log.item[safe]
        candidates, log_q = sampler.sample(targets[valid], sample_rng)
        slots = torch.from_numpy(slot_of(candidates))
        carried = carried_repeats(log, inputs, slots, gap, model.config.repeat_basket_decay)
        arrays = (targets, valid, log.weight[safe].astype(np.float32))
        tensors = (*map(torch.from_numpy, arrays), slots, torch.from_numpy(log_q).float())
        yield (batch, carried, *tensors), int(valid.sum())
