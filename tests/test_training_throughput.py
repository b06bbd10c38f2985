"""The training-throughput benchmark (benchmarks/training_throughput.py) at toy sizes: its
generated shops are well-formed logs, one measured epoch reports its rate and memory, and
the scaling figure is drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from starsrec.experiments.plots import scaling_loglog
from tiny import load_benchmark, overrides


def benchmark():
    return load_benchmark("training_throughput")


def test_a_generated_shop_is_a_well_formed_log() -> None:
    catalogue, log = benchmark().synthetic_shop(events=6000, items=500)
    assert log.size == 6000 and catalogue.size == 500 and log.n_users == 200
    assert log.offsets[-1] == log.size and (np.diff(log.offsets) >= 0).all()
    assert (np.diff(log.user) >= 0).all() and 0 <= log.item.min() <= log.item.max() < 500
    for user in range(0, log.n_users, 37):  # time-ordered within each user
        start, end = log.offsets[user], log.offsets[user + 1]
        assert (np.diff(log.timestamp[start:end]) >= 0).all()
    counts = np.bincount(log.item, minlength=500)
    assert counts[:50].sum() > counts[-50:].sum() * 5  # popular items first (Zipf)


def test_one_measured_epoch_reports_its_rate_and_memory(tmp_path: Path) -> None:
    spec = {"events": 3000, "items": 300, "epochs": 1, "threads": 1, "device": "cpu"}
    row = benchmark().worker({**spec, "overrides": overrides()})
    assert row["epochs"] == 1 and 0 < row["trained_events"] <= 3000
    assert row["events_per_s"] > 0 and row["peak_rss_mib"] > 100

    rows = [
        {"events": e, "items": n, "train_s": s, "epochs": 1, "peak_rss_mib": m}
        for e, n, s, m in [(1000, 100, 1.0, 500), (10000, 100, 9.0, 600), (1000, 1000, 1.5, 700)]
    ]
    figure = scaling_loglog(rows, tmp_path / "scaling.png", "toy")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
