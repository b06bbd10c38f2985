"""The `starsrec` command end to end on a user's own files (the toy world as CSV)."""

import json
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from conftest import TINY_OVERRIDES
from starsrec.cli import main
from starsrec.data.toyworld import make_toy_world
from starsrec.serving.service import RecommendationService
from starsrec.web.app import create_app


@pytest.fixture()
def shop(tmp_path: Path) -> Path:
    """The toy world written the way a user would hand us their files."""
    world = make_toy_world(n_users=60)
    folder = tmp_path / "shop"
    folder.mkdir()
    world.events.to_csv(folder / "events.csv", index=False)
    world.items.to_csv(folder / "items.csv", index=False)
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "name": "shop",
                "country": "GB",
                "temporal_cuts": {"validation": "2024-01-30", "test": "2024-02-03"},
            }
        )
    )
    return folder


def test_prepare_then_evaluate(shop: Path, tmp_path: Path, capsys) -> None:
    data_dir = tmp_path / "prepared"
    assert main(["data", "prepare", str(shop), "--out", str(data_dir)]) == 0
    summary = capsys.readouterr().out
    assert "users" in summary and "60" in summary
    assert (data_dir / "events.parquet").exists() and (data_dir / "dataset.json").exists()

    report_dir = tmp_path / "report"
    argv = ["evaluate", str(data_dir), "--models", "popularity,cooccurrence-knn"]
    assert main([*argv, "--protocol", "temporal", "--out", str(report_dir)]) == 0
    records = json.loads((report_dir / "results.json").read_text())
    assert [r["model"] for r in records] == ["popularity", "cooccurrence-knn"]
    for record in records:
        assert record["dataset"] == "shop" and record["protocol"] == "temporal"
        assert set(record["metrics"]) >= {"hit@5", "ndcg@10", "mrr@10", "coverage@10"}
        assert set(record["slices"]) >= {"cold", "long_tail", "repeat", "short_history"}
    report = (report_dir / "report.md").read_text()
    assert "| shop | temporal | cooccurrence-knn |" in report
    assert "Already-seen items allowed" in report
    # The sequence-aware model beats popularity on a world made of sequences.
    ndcg = {r["model"]: r["metrics"]["ndcg@10"] for r in records}
    assert ndcg["cooccurrence-knn"] > ndcg["popularity"]

    assert main(["evaluate", str(data_dir), "--models", "popularity,nope"]) == 2
    assert "unknown model(s) nope; choose from popularity" in capsys.readouterr().err

    # Places kept for items without training events: rows of their own.
    slots_dir = tmp_path / "slots"
    argv += ["--protocol", "temporal", "--new-item-slots", "2", "--out", str(slots_dir)]
    assert main(argv) == 0
    placed = json.loads((slots_dir / "results.json").read_text())
    assert [r["model"] for r in placed] == [f"{r['model']} +2 new-item slots" for r in records]
    assert main([*argv[:-4], "--new-item-slots", "-1"]) == 2
    assert "--new-item-slots must be >= 0" in capsys.readouterr().err


def test_bad_input_is_one_clear_line(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "events.csv").write_text("user_id,item_id,when\nu1,a,2024-01-01\n")
    (folder / "items.csv").write_text("item_id,text\na,apple\n")
    assert main(["data", "prepare", str(folder), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ")
    assert "events.csv" in error and "timestamp" in error
    assert "--debug" in error
    assert not (tmp_path / "out").exists()


def test_evaluate_needs_a_prepared_dataset(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path), "--models", "popularity"]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("starsrec ")


def test_train_then_evaluate_the_artifact(shop: Path, tmp_path: Path, capsys) -> None:
    data_dir = tmp_path / "prepared"
    assert main(["data", "prepare", str(shop), "--out", str(data_dir)]) == 0
    artifact = tmp_path / "artifact"
    overrides = [arg for value in TINY_OVERRIDES for arg in ("--set", value)]
    argv = ["train", str(data_dir), *overrides, "--out", str(artifact)]
    assert main(argv) == 0
    meta = json.loads((artifact / "meta.json").read_text())
    assert meta["dataset"] == "shop" and meta["variant"] == "stars"
    assert meta["config"]["model"]["dim"] == 16
    assert len(meta["history"]) == 2 and 0 <= meta["validation_ndcg@10"] <= 1
    for name in ("config.json", "state.safetensors", "items.parquet", "calendar.json"):
        assert (artifact / name).exists(), name

    report_dir = tmp_path / "report"
    assert main(["evaluate", str(artifact), "--out", str(report_dir)]) == 0
    (record,) = json.loads((report_dir / "results.json").read_text())
    # a shop log: its default protocol is the next basket
    assert record["model"] == "stars" and record["protocol"] == "next-basket"
    assert 0 <= record["metrics"]["ndcg@10"] <= 1

    # Against baselines on the same test queries: STARS's paired interval in its report.
    baselines = tmp_path / "baselines"
    assert main(["evaluate", str(data_dir), "--models", "popularity", "--out", str(baselines)]) == 0
    joint = tmp_path / "joint"
    argv = ["evaluate", str(artifact), "--compare-with", str(baselines), "--out", str(joint)]
    assert main(argv) == 0
    (row,) = json.loads((joint / "comparisons.json").read_text())
    assert (row["model"], row["baseline"]) == ("stars", "popularity")
    assert row["low"] <= row["mean_difference"] <= row["high"]
    other = tmp_path / "other"
    argv = ["evaluate", str(data_dir), "--protocol", "temporal", "--models", "popularity"]
    assert main([*argv, "--out", str(other)]) == 0
    capsys.readouterr()
    argv = ["evaluate", str(artifact), "--compare-with", str(other), "--out", str(joint)]
    assert main(argv) == 2
    assert "evaluate them with the same dataset and protocol" in capsys.readouterr().err

    # The offline stage, then the service loaded from the artifact and served.
    assert main(["index", str(artifact)]) == 0
    assert "starsrec serve" in capsys.readouterr().out
    for name in ("serving.json", "encoder.onnx", "events.sqlite", "memories.safetensors"):
        assert (artifact / "serving" / name).exists(), name
    service = RecommendationService.load(artifact)
    with TestClient(create_app(service)) as client:
        response = client.post("/v1/recommend", json={"k": 3})
        assert response.status_code == 200 and len(response.json()["items"]) == 3
    service.store.close()

    # A dataset that changed since training is refused.
    events = pd.read_parquet(data_dir / "events.parquet")
    events.iloc[:-1].to_parquet(data_dir / "events.parquet", index=False)
    capsys.readouterr()
    assert main(["evaluate", str(artifact), "--out", str(report_dir)]) == 2
    assert "trained on another version of dataset 'shop'" in capsys.readouterr().err
    assert main(["index", str(artifact)]) == 2
    assert "trained on another version" in capsys.readouterr().err


def test_bad_config_override(tmp_path: Path, capsys) -> None:
    argv = ["train", str(tmp_path), "--set", "model.nope=1", "--out", str(tmp_path / "a")]
    assert main(argv) == 2
    assert "bad STARS config" in capsys.readouterr().err


def test_an_unknown_variant_is_refused_naming_the_known_ones(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path), "--variant", "stars-no-nothing", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'stars-no-nothing'" in error and "'stars-no-live'" in error
    assert not list(tmp_path.iterdir())  # refused before anything was written
