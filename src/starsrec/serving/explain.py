"""Why each result was recommended: its text and tags, the tags it shares with the shopper's
recent items, and which memory drove it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from starsrec.serving.catalogue import ItemTable


@dataclass(frozen=True)
class Recommendation:
    """One result of a request, as the API returns it."""

    item_id: str
    score: float
    text: str
    tags: tuple[str, ...]
    shared_tags: tuple[str, ...]
    memory: str  # "session", "long-term", "repeat" or "context" (no history: popularity)


def memory_sources(
    tokens: np.ndarray,
    found: np.ndarray,
    rows: np.ndarray,
    short: np.ndarray,
    long: np.ndarray,
    gate: np.ndarray,
) -> list[str]:
    """Which memory drove each result: its token's inner product with g * u_S against
    (1 - g) * u_L (`tokens` (k, D) of the `found` rows); "repeat" for the user's own items,
    "context" without history."""
    if not len(rows):
        return ["context"] * len(found)
    session, long_term = tokens @ (gate * short), tokens @ ((1 - gate) * long)
    own = set(rows.tolist())
    return [
        "repeat" if row in own else "session" if nearer else "long-term"
        for row, nearer in zip(found.tolist(), (session > long_term).tolist(), strict=True)
    ]


def explain(
    items: ItemTable,
    tag_names: np.ndarray,
    max_length: int,
    found: np.ndarray,
    scores: np.ndarray,
    rows: np.ndarray,
    memories: list[str],
) -> list[Recommendation]:
    """Results with their text, tags and the tags they share with the recent items."""
    window = rows[-max_length:]
    recent = items.tags[window].any(0) if len(window) else np.zeros(items.tags.shape[1], bool)
    tagged = items.tags[found] > 0  # (k, T)
    return [
        Recommendation(
            item_id=items.item_ids[row],
            score=score,
            text=items.texts[row],
            tags=tuple(tag_names[flags]),
            shared_tags=tuple(tag_names[flags & recent]),
            memory=memory,
        )
        for row, score, flags, memory in zip(
            found.tolist(), scores.tolist(), tagged, memories, strict=True
        )
    ]
