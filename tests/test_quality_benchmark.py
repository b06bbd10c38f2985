"""benchmarks/quality.py: results only from a clean commit, cells merged without loss, and
the docs section rebuilt in place."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from starsrec.experiments.report import source_revision
from tiny import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    yield load_benchmark("quality")
    del sys.modules["quality"]


def test_source_revision_names_the_checkouts_commit() -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode:
        pytest.skip("not a git checkout")
    assert source_revision().removesuffix("+dirty") == head.stdout.strip()


def test_a_dirty_tree_is_refused_without_allow_dirty(quality, monkeypatch, capsys) -> None:
    monkeypatch.setattr(quality, "dirty_files", lambda: ["src/starsrec/cli.py"])
    monkeypatch.setattr(sys, "argv", ["quality.py", "--cells", "online-retail/next-basket"])
    with pytest.raises(SystemExit):
        quality.main()
    error = capsys.readouterr().err
    assert "src/starsrec/cli.py" in error and "--allow-dirty" in error


def record(model: str, seed: int, values: list[float]) -> dict:
    return {
        "dataset": "toy",
        "protocol": "next-basket",
        "model": model,
        "seed": seed,
        "metrics": {"ndcg@10": float(np.mean(values))},
        "per_query": {"ndcg@10": np.array(values)},
    }


def test_save_cell_replaces_reruns_and_keeps_the_rest(quality, tmp_path) -> None:
    out = tmp_path / "quality.json"
    quality.save_cell([record("a", 0, [0.1, 0.2]), record("b", 0, [0.3, 0.4])], out)
    quality.save_cell([record("a", 0, [0.5, 0.6])], out)  # a rerun of a
    stored = json.loads(out.read_text())
    assert [(r["model"], r["metrics"]["ndcg@10"]) for r in stored] == [("a", 0.55), ("b", 0.35)]
    assert all("per_query" not in r for r in stored)
    frame = pd.read_parquet(tmp_path / "per_query" / "toy-next-basket.parquet")
    assert frame["ndcg@10"].dtype == np.float32
    by_model = frame.groupby("model")["ndcg@10"].apply(list).to_dict()
    assert by_model == {"a": pytest.approx([0.5, 0.6]), "b": pytest.approx([0.3, 0.4])}


def test_write_docs_replaces_its_section_in_place(quality, tmp_path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nintro\n\n## Serving\n\nfast\n")
    quality.write_docs("first table", docs)
    quality.write_docs("second table", docs)
    text = docs.read_text()
    assert text.count(quality.BEGIN) == 1 and "first table" not in text
    assert text.index("second table") < text.index("## Serving") and "fast" in text


def test_resume_skips_models_done_at_this_commit_on_every_seed(quality) -> None:
    cell = quality.Cell("online-retail", "next-basket")
    done = [
        {"dataset": "online-retail", "protocol": "next-basket", "model": m, "seed": s, "commit": c}
        for m, s, c in [
            ("stars", 0, "abc1234"),
            ("stars", 1, "abc1234"),
            ("popularity", 0, "abc1234"),  # unseeded: one run stands for every seed
            ("lambdamart", 0, "abc1234"),
            ("lambdamart", 1, "0ld0ld0"),  # another commit's run does not count
        ]
    ]
    models = ["stars", "popularity", "lambdamart", "tifu-knn"]
    missing = quality.missing_models(done, cell, models, [0, 1], "abc1234")
    assert missing == ["lambdamart", "tifu-knn"]
    assert quality.missing_models(done, cell, ["stars"], [0, 1, 2], "abc1234") == ["stars"]
