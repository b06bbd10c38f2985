"""The model's inputs: item slots, and event windows as padded tensors (`EventBatch`).

Item slot 0 is padding; catalogue item index i lives in slot i + 1 (`slot_of`), so an
embedding table of N + 1 rows serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypeVar

import numpy as np
import torch

from starsrec.stars.device import to_device

RECENCY_BUCKETS = 16
PAD = 0  # item slot 0 is padding; item index i lives in slot i + 1


# What slot_of takes and gives back: an array, a tensor or one index.
Index = TypeVar("Index", np.ndarray, torch.Tensor, int)


def slot_of(index: Index) -> Index:
    """Item slots of catalogue indices (index + 1; slot 0 is padding)."""
    return index + 1


@dataclass
class EventBatch:
    """Model inputs: left-padded event sequences and what is asked after each event.

    items (B, T) long: item slot (index + 1), PAD where empty.
    event_types, hours, weekdays, recency (B, T) long: per-event features; recency is the
    bucketised gap from the event to the next one (to the request for the last).
    request_hour, request_weekday, request_month (B, T) long, request_events (B, T, K)
    float: the context of the request that follows each event.
    new_session (B, T) bool: the request comes after the session gap (use u_L alone).
    event_days, request_days (B, T) float: event and request times in days (repeat recency).
    """

    items: torch.Tensor
    event_types: torch.Tensor
    hours: torch.Tensor
    weekdays: torch.Tensor
    recency: torch.Tensor
    request_hour: torch.Tensor
    request_weekday: torch.Tensor
    request_month: torch.Tensor
    request_events: torch.Tensor
    new_session: torch.Tensor
    event_days: torch.Tensor
    request_days: torch.Tensor

    def to(self, device: torch.device) -> EventBatch:
        """The batch on `device` (the same tensors on the CPU; see `device.to_device`)."""
        moved = {f.name: to_device(getattr(self, f.name), device) for f in fields(self)}
        return EventBatch(**moved)


def recency_bucket(gap_seconds: torch.Tensor) -> torch.Tensor:
    """Bucketise time gaps on a log scale: 0 for < 1 minute, then doubling minutes."""
    minutes = gap_seconds.clamp(min=0).float() / 60.0
    bucket = torch.floor(torch.log2(1.0 + minutes))
    return bucket.long().clamp(0, RECENCY_BUCKETS - 1)


def dormant_seconds(use_recency: bool, session_gap_minutes: float) -> float:
    """A gap after which u_L no longer depends on how long ago the last event was (the
    recency encoding has reached its last bucket), so a long-term memory computed offline
    at that gap is exactly the one any later request would compute."""
    if not use_recency:
        return session_gap_minutes * 60.0 + 1.0
    return (2.0 ** (RECENCY_BUCKETS - 1) - 1.0) * 60.0
