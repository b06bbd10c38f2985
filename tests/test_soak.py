"""A short smoke run of the soak benchmark (benchmarks/soak.py): a real server process under
steady mixed reads and writes answers every request, and the record holds what the docs
report."""

from __future__ import annotations

from pathlib import Path

from tiny import load_benchmark


def test_soak_smoke_run_has_no_errors(served_artifact, tmp_path: Path) -> None:
    _, _, artifact = served_artifact
    soak = load_benchmark("soak")
    out = tmp_path / "soak.json"
    args = ["--artifact", str(artifact), "--duration", "6", "--rate", "25", "--window", "3"]
    record = soak.main([*args, "--warmup", "2", "--out", str(out)])
    assert record["errors"] == 0, record["error_statuses"]
    assert record["requests"] >= 0.9 * 6 * 25  # open loop: the rate was kept
    assert [w["from_s"] for w in record["windows"]] == [0.0, 3.0]
    assert sum(w["requests"] for w in record["windows"]) == record["requests"]
    assert record["rss_end_mib"] > 0 and out.exists()
