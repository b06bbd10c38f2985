"""Report figures and tables: each plot writes a PNG of the expected size, `write_figures`
picks the figures that apply, `write_report` links the ones it wrote, and the table shows
the training threads."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from starsrec.experiments.plots import (
    ablation_bars,
    difference_bars,
    latency_cdf,
    markdown_images,
    metric_vs_k,
    slice_bars,
    write_figures,
)
from starsrec.experiments.report import make_model, markdown_table, write_report

COMPARISON = {  # a `comparisons` row
    "dataset": "toy",
    "protocol": "temporal",
    "baseline": "popularity",
    "metric": "ndcg@10",
    "mean_difference": 0.02,
    "low": 0.01,
    "high": 0.03,
    "minimal_detectable_difference": 0.015,
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def assert_png(path) -> None:
    assert path.exists() and path.stat().st_size > 5_000
    assert png_size(path) == (1200, 700)


def metrics(level: float) -> dict:
    result = {}
    for k in (5, 10, 20):
        result[f"hit@{k}"] = result[f"recall@{k}"] = min(1.0, level * k / 5)
        result[f"ndcg@{k}"] = level * (1 + k / 20) / 2
        result[f"mrr@{k}"] = level / 2
    return result | {"coverage@10": 0.1}


def record(model: str, seed: int, level: float, dataset="toy", protocol="temporal", **slices):
    counts = {"cold": 7, "long_tail": 40, "repeat": 0} | slices
    return {
        "dataset": dataset,
        "protocol": protocol,
        "model": model,
        "seed": seed,
        "metrics": metrics(level),
        "slices": {
            name: {"queries": n, **(metrics(level / 2) if n else dict.fromkeys(metrics(0), NAN))}
            for name, n in counts.items()
        }
        | {"thresholds": {"history_median": 4.0, "head_items": 12.0}},
        "queries": 100,
        "exclude_seen": True,
        "split": "temporal: toy",
        "train_s": 0.1,
        "eval_s": 0.01,
        "date": "2026-01-01",
        "machine": "test",
    }


@pytest.fixture
def records() -> list[dict]:
    """Two models over two seeds, SASRec, two ablations; a second protocol without them."""
    runs = [
        record(m, s, lvl + 0.01 * s)
        for m, lvl in (("popularity", 0.1), ("stars", 0.3))
        for s in (0, 1)
    ]
    runs += [record("sasrec", 0, 0.25), record("stars-no-text", 0, 0.2)]
    runs += [record("stars-no-delta", s, 0.28 + 0.01 * s) for s in (0, 1)]
    runs += [
        record(m, 0, lvl, protocol="leave-one-out")
        for m, lvl in (("popularity", 0.1), ("stars", 0.3))
    ]
    return runs


def test_each_plot_writes_a_png(records, tmp_path):
    temporal = [r for r in records if r["protocol"] == "temporal"]
    assert_png(metric_vs_k(temporal, tmp_path / "k.png", "Hit@K and NDCG@K"))
    assert_png(slice_bars(temporal, tmp_path / "slices.png", "slices"))
    assert_png(ablation_bars(temporal, tmp_path / "ablations.png", "ablations"))
    rows = [COMPARISON | {"model": "stars"}, COMPARISON | {"model": "lambdamart", "low": -0.03}]
    assert_png(difference_bars(rows, tmp_path / "differences.png", "differences"))
    latencies = {"none": [1.0, 1.5, 2.0, 9.0] * 50, "10%": [2.0, 3.0] * 100, "1%": []}
    assert_png(latency_cdf(latencies, tmp_path / "deep" / "latency.png", "latency"))


def test_write_figures_picks_what_applies(records, tmp_path):
    paths = write_figures(records, tmp_path, "quality", [COMPARISON | {"model": "stars"}])
    assert [p.name for p in paths] == [
        "quality-toy-temporal-metric-vs-k.png",
        "quality-toy-temporal-slices.png",
        "quality-toy-temporal-ablations.png",
        "quality-toy-temporal-differences.png",
        "quality-toy-leave-one-out-metric-vs-k.png",
        "quality-toy-leave-one-out-slices.png",
    ]
    for path in paths:
        assert_png(path)
    assert sorted(tmp_path.iterdir()) == sorted(paths)


def test_no_ablations_and_empty_slices_give_no_figure(tmp_path):
    runs = [record(m, 0, 0.2, cold=0, long_tail=0) for m in ("popularity", "stars", "sasrec")]
    paths = write_figures(runs, tmp_path, "x")
    assert [p.name for p in paths] == ["x-toy-temporal-metric-vs-k.png"]
    with pytest.raises(ValueError, match="ablation"):
        ablation_bars(runs, tmp_path / "a.png", "a")
    with pytest.raises(ValueError, match="slice"):
        slice_bars(runs, tmp_path / "s.png", "s")


def test_markdown_images_are_relative(tmp_path):
    path = tmp_path / "figures" / "q-toy-temporal-slices.png"
    assert markdown_images([path], tmp_path) == (
        "![q-toy-temporal-slices: Recall@10 on the hard slices](figures/q-toy-temporal-slices.png)"
    )


def test_write_report_links_its_figures(records, tmp_path):
    report = write_report(records, tmp_path / "report", "toy")
    text = report.read_text()
    assert text.startswith("# toy\n") and "| toy | temporal | stars | 2 |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 5 and all(link.startswith("report-toy-") for link in links)
    for link in links:
        assert_png(report.parent / link)
    assert (report.parent / "results.json").exists()


def test_training_threads_reach_the_models_and_the_table():
    assert make_model("stars", seed=1, threads=2).config.train.threads == 2
    assert make_model("lambdamart", seed=1, threads=2).config.threads == 2
    assert make_model("popularity", seed=1, threads=2) is not None  # no threads: ignored
    alone = [record("stars", s, 0.3) | {"threads": 2} for s in (0, 1)]
    shared = [record("popularity", 0, 0.1)]  # older records carry no thread count: one
    rows = markdown_table(alone + shared).splitlines()
    assert rows[2].endswith("| 0.1 (2 threads) | 0.0 |")
    assert rows[3].endswith("| 0.1 | 0.0 |")


def test_importing_starsrec_does_not_import_matplotlib():
    code = (
        "import sys, starsrec, starsrec.experiments.plots; assert 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_verdict_says_who_wins_by_how_much() -> None:
    from starsrec.experiments.comparisons import verdict

    base = COMPARISON | {"baseline_mean": 0.25}
    win = base | {"model": "stars", "mean_difference": 0.02, "low": 0.01, "high": 0.03}
    level = base | {"model": "sasrec", "mean_difference": 0.001, "low": -0.01, "high": 0.012}
    loss = base | {"model": "lambdamart", "mean_difference": -0.05, "low": -0.06, "high": -0.04}
    assert verdict([loss, win, level]).startswith("**stars is best** on ndcg@10: +0.0200")
    assert "No model is shown better than popularity" in verdict([loss, level])
    assert verdict([loss]).startswith("**popularity is best**") and "-0.0500" in verdict([loss])
    assert verdict([]) == ""
