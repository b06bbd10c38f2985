"""Encoding a dataset into arrays, and building queries for known users."""

import numpy as np

from starsrec.data.interactions import UNKNOWN_USER, Catalogue, EventLog, Queries
from starsrec.data.toyworld import make_toy_world


def test_event_log_groups_users_in_time_order() -> None:
    world = make_toy_world(n_users=5)
    catalogue = Catalogue.from_items(world.items)
    log = EventLog.from_dataset(world, catalogue)
    assert log.size == len(world.events)
    assert log.offsets[-1] == log.size
    for u, user_id in enumerate(log.user_ids):
        rows = slice(log.offsets[u], log.offsets[u + 1])
        source = world.events[world.events.user_id == user_id]
        assert catalogue.item_ids[log.item[rows]].tolist() == source.item_id.tolist()
        assert (np.diff(log.timestamp[rows]) >= 0).all()
    assert catalogue.index_of(["s0-n1", "nope"]).tolist() == [1, -1]
    assert catalogue.class_names == ("class-0", "class-1")


def test_queries_for_users() -> None:
    world = make_toy_world(n_users=5)
    catalogue = Catalogue.from_items(world.items)
    log = EventLog.from_dataset(world, catalogue)
    queries = Queries.for_users(log, ["u0003", "stranger"])
    assert queries.user.tolist() == [3, UNKNOWN_USER]
    assert queries.lengths.tolist() == [log.offsets[4] - log.offsets[3], 0]
    # Without a time, a known user is asked right after their last event.
    assert queries.time[0] == log.timestamp[log.offsets[4] - 1]
    query, rows = queries.flat_history()
    assert (query == 0).all()
    assert rows.tolist() == list(range(log.offsets[3], log.offsets[4]))
    assert (Queries.for_users(log, ["u0001"], time=123).time == 123).all()
