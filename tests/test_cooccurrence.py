"""The co-occurrence table and its two readers: a batch of queries (the baseline and the
offline STARS scorer) and one request's purchases (the service)."""

from __future__ import annotations

import dataclasses

import numpy as np

from starsrec.data.cooccurrence import (
    CooccurrenceConfig,
    history_similarity,
    request_similarity,
    similarity_table,
    table_from_state,
    table_state,
)
from starsrec.data.dataset import EventType
from starsrec.data.interactions import Catalogue, EventLog, Queries
from starsrec.data.toyworld import make_toy_world
from starsrec.data.validation import validate


def viewed_world() -> tuple[EventLog, EventLog, int]:
    """The toy world with every third event a view (not a target), the same world with the
    views dropped, and the catalogue's size: views must count nowhere."""
    dataset = make_toy_world(n_users=60, noise=0.2)
    events = dataset.events.copy()
    events.loc[events.index % 3 == 0, "event_type"] = "view"
    types = (EventType("purchase"), EventType("view", weight=0.2, target=False))
    viewed = validate(dataclasses.replace(dataset, events=events, event_types=types))
    bought = events[events.event_type == "purchase"].reset_index(drop=True)
    plain = validate(dataclasses.replace(viewed, events=bought))
    catalogue = Catalogue.from_items(dataset.items)
    logs = (EventLog.from_dataset(d, catalogue) for d in (viewed, plain))
    return *logs, catalogue.size


def test_a_request_gets_the_similarities_its_query_gets() -> None:
    """`request_similarity` of a user's purchases equals `history_similarity`'s row for the
    user, the rows without similarity left out, also with a history shorter than the log."""
    log, _, n_items = viewed_world()
    for config in (CooccurrenceConfig(), CooccurrenceConfig(history=3, decay=0.5)):
        table = similarity_table(log, n_items, config)
        assert table.nnz and (table.getnnz(axis=1) <= config.neighbours).all()
        queries = Queries.for_users(log, list(log.user_ids))
        expected = history_similarity(queries, table, config)
        for q in range(len(queries)):
            rows = queries.history(q)
            bought = log.item[rows][log.is_target[rows]]
            found, sums = request_similarity(bought, table, config)
            assert (np.diff(found) > 0).all()
            np.testing.assert_allclose(sums, expected[q, found], rtol=1e-12)
            assert (expected[q, np.setdiff1d(np.arange(n_items), found)] == 0).all()


def test_views_add_nothing_and_products_added_since_have_no_neighbours() -> None:
    """Only purchases count: the table is the one of the purchases alone; a row past the
    table (a product put since it was built) is skipped but takes the latest place."""
    log, purchases_only, n_items = viewed_world()
    config = CooccurrenceConfig()
    table = similarity_table(log, n_items, config)
    assert (table != similarity_table(purchases_only, n_items, config)).nnz == 0
    bought = log.item[log.is_target][:5]
    found, sums = request_similarity(bought, table, config)
    assert len(found)
    later, later_sums = request_similarity(np.append(bought, n_items + 3), table, config)
    np.testing.assert_array_equal(later, found)
    np.testing.assert_allclose(later_sums, sums * config.decay)  # each purchase a step older
    assert request_similarity(bought[:0], table, config)[0].size == 0


def test_the_table_saves_and_loads_unchanged() -> None:
    log, _, n_items = viewed_world()
    table = similarity_table(log, n_items, CooccurrenceConfig())
    state = table_state(table, "cooccurrence.")
    assert all(name.startswith("cooccurrence.") for name in state)
    back = table_from_state(state, "cooccurrence.")
    assert back.shape == table.shape and (back != table).nnz == 0
