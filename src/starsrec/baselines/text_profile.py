"""Item text for the baselines: the catalogue's text embeddings (the encoder STARS uses, same
cache) and a user's text profile, for LambdaMART's text candidates and features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from starsrec.data.interactions import Catalogue, Queries
from starsrec.features.encoders import named_encoder
from starsrec.features.text import catalogue_groups, embed_items


def item_text(
    catalogue: Catalogue,
    encoder: str | None,
    cache: str | None,
    derived: tuple[int, int],
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, Dt) unit-norm text embeddings by the encoder named `encoder` ((N, 0) for None), and
    the (N,) subclass and class of every item: the catalogue's, or for a catalogue without
    them `derived` = (subclasses, classes) k-means clusters of the texts, as STARS derives."""
    if encoder is None:
        return np.zeros((catalogue.size, 0), np.float32), catalogue.subclass, catalogue.item_class
    text = embed_items(
        list(catalogue.texts),
        named_encoder(encoder, seed),
        cache_dir=Path(cache) if cache else None,
    ).astype(np.float32)
    text /= np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    subclass, item_class = catalogue_groups(catalogue, text, *derived, seed)
    return text, subclass, item_class


def text_similarities(
    text: np.ndarray, queries: Queries, history: int
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, N) cosine of each item's text with the query's text profile (the normalised sum of
    the item texts of its last `history` events) and (Q, N) with its last event's item; zero
    rows for a query without history, all zeros for (N, 0) `text`."""
    shape = (len(queries), len(text))
    if not text.shape[1]:
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    query, rows = queries.flat_history()
    recent = queries.end[query] - rows <= history
    counts = sp.csr_matrix(
        (np.ones(int(recent.sum()), np.float32), (query[recent], queries.log.item[rows[recent]])),
        shape=shape,
    )
    profile = np.asarray(counts @ text, dtype=np.float32)
    profile /= np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
    last = np.zeros((len(queries), text.shape[1]), np.float32)
    has_history = queries.end > queries.start
    last[has_history] = text[queries.log.item[queries.end[has_history] - 1]]
    # One matrix-vector product per query, not one matrix product per batch: BLAS may sum a
    # batch's products in another order, and a re-ranker's features must not depend on
    # which other queries share the batch.
    return _rows_times(profile, text), _rows_times(last, text)


def _rows_times(rows: np.ndarray, text: np.ndarray) -> np.ndarray:
    """(Q, N) text @ row for each row, float32."""
    out = np.empty((len(rows), len(text)), np.float32)
    for q, row in enumerate(rows):
        out[q] = text @ row
    return out
