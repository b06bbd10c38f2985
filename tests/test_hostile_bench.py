"""A short smoke run of the hostile-load benchmark (benchmarks/hostile.py): a real server
under every attack answers each with a 4xx and never a 5xx, and the record holds what the
docs report."""

from __future__ import annotations

import json

from tiny import load_benchmark


def test_hostile_smoke_run_answers_every_attack_without_a_5xx(served_artifact, tmp_path) -> None:
    _, _, artifact = served_artifact
    hostile = load_benchmark("hostile")
    out = tmp_path / "hostile.json"
    args = ["--artifact", str(artifact), "--phase-seconds", "2", "--slow-seconds", "2"]
    record = hostile.main([*args, "--out", str(out)])
    assert record["server_errors"] == 0
    assert list(record["phases"]) == list(hostile.PHASES)
    assert all(p["healthz"]["requests"] > 0 for p in record["phases"].values())
    assert not any(p["healthz"]["failed"] for p in record["phases"].values())
    # Each attack was answered, with its 4xx (0: a reset the streaming client met first).
    answers = record["attacks"]
    assert set(answers["50 MB chunked"]) <= {"411", "0"}
    assert set(answers["Content-Length: 50 MB"]) <= {"413", "0"}
    assert set(answers["1 MiB of [{},...] without the key"]) == {"401"}
    assert set(answers["1 MiB of [{},...] with the key"]) == {"422"}
    assert set(answers["1 MiB of [[[... whole, /v1/items"]) == {"400"}
    assert set(answers["1,000 new products"]) == {"200"}
    assert record["rss_ratio"] > 0 and json.loads(out.read_text())["met"] == record["met"]
