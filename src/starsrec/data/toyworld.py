"""A small synthetic shop whose right answer is known by construction.

Items form chains inside subclasses: item n of a subclass is followed by item n + 1.
Each user walks one chain from a random start, one purchase a day, so the item a user
buys next is always the successor of the last one (with probability `1 - noise`; otherwise
a random item). Classes group subclasses, so taxonomy-aware models have a signal too.
The contract tests and the quick-start tests use it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from starsrec.data.dataset import Dataset, EventType, TemporalCuts
from starsrec.data.validation import validate

START = pd.Timestamp("2024-01-01")


def make_toy_world(
    n_users: int = 200,
    n_subclasses: int = 6,
    chain_length: int = 12,
    min_events: int = 4,
    max_events: int = 8,
    noise: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """A validated Dataset of users walking item chains (see module doc)."""
    rng = np.random.default_rng(seed)
    n_items = n_subclasses * chain_length
    items = pd.DataFrame(
        {
            "item_id": [f"s{s}-n{n}" for s in range(n_subclasses) for n in range(chain_length)],
            "text": [
                f"product {n} of line {s}" for s in range(n_subclasses) for n in range(chain_length)
            ],
            "class": [f"class-{s % 2}" for s in range(n_subclasses) for _ in range(chain_length)],
            "subclass": [f"line-{s}" for s in range(n_subclasses) for _ in range(chain_length)],
        }
    )
    rows = []
    for u in range(n_users):
        subclass = rng.integers(n_subclasses)
        length = int(rng.integers(min_events, max_events + 1))
        start = rng.integers(0, chain_length - length + 1)
        first_day = rng.integers(0, 30)
        for step in range(length):
            item = subclass * chain_length + start + step
            if noise and rng.random() < noise:
                item = rng.integers(n_items)
            rows.append(
                (f"u{u:04d}", items.item_id[item], START + pd.Timedelta(days=first_day + step))
            )
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    events["event_type"] = "purchase"
    return validate(
        Dataset(
            name="toy-world",
            events=events,
            items=items,
            event_types=(EventType("purchase"),),
            country="GB",
            temporal_cuts=TemporalCuts(validation="2024-01-30", test="2024-02-03"),
            notes={"world": "users walk item chains; the next item is the successor"},
        )
    )
