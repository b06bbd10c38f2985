"""Quality benchmark: every model on every headline cell, from one clean commit, with paired
intervals.

    python benchmarks/quality.py                          # everything, 3 seeds (hours)
    python benchmarks/quality.py --cells online-retail/next-basket --models stars --seeds 0
    python benchmarks/quality.py --table-only             # rebuild the tables and figures
    python benchmarks/quality.py --threads 2              # alone on a 2-core machine
    python benchmarks/quality.py --resume                 # go on after a stop (same commit)
    benchmarks/quality_streams.sh a & benchmarks/quality_streams.sh b &   # both cores

A cell is a dataset under a protocol (see CELLS): MovieLens-100K leave-one-out with seen
items excluded and not (the literature's two conventions), Online Retail next-basket and
Instacart last-basket (the shop-log headlines), and within baskets Online Retail
basket-completion and Instacart in-session. Seeded models run once per seed, the others
once. Results refuse to come from a tree with uncommitted changes to the code unless
`--allow-dirty`; every record names its commit. Each model's runs on a cell are saved as
they finish; `--resume` skips those already done at the current commit.

Writes, merging with what is there (a rerun replaces the same cell/model/seed):
- benchmarks/results/quality.json: one record per cell, model and seed (metrics, slices,
  timings, commit, machine);
- benchmarks/results/per_query/{dataset}-{protocol}.parquet: every per-query metric, what
  the paired intervals are computed from;
- benchmarks/results/quality.md and figures under benchmarks/results/figures/, and the
  section between the QUALITY markers in docs/benchmarks.md: the metric table (mean ± std
  over seeds), each model's paired 95% interval to the strongest baseline with the cell's
  minimal detectable difference, and the popularity sanity row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from starsrec.baselines import BASELINES
from starsrec.baselines.popularity import PopularityConfig, PopularityRecommender
from starsrec.data.baskets import BasketSplit
from starsrec.data.dataset import Dataset
from starsrec.data.live import LIVE_HALF_LIVES_DAYS
from starsrec.data.loaders import prepare
from starsrec.data.splits import Split, split_dataset
from starsrec.experiments.comparisons import comparison_table, frame_comparisons, per_query_frame
from starsrec.experiments.plots import markdown_images, write_figures
from starsrec.experiments.report import (
    MODEL_NAMES,
    evaluation_record,
    is_seeded,
    markdown_table,
    run_models,
    source_revision,
    training_data,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- QUALITY:BEGIN (benchmarks/quality.py) -->", "<!-- QUALITY:END -->"
# The issue-17 target: each headline cell detects differences of 5% of its best baseline.
MDD_TARGET = 0.05
# Popularity by plain counts on MovieLens-100K leave-one-out, nothing masked: what another
# library's harness gives on the same protocol (issue 17), NDCG@10 and Hit@10, ± tolerance.
SANITY = {"ndcg@10": 0.023, "hit@10": 0.050}
SANITY_TOLERANCE = 0.001


@dataclass(frozen=True)
class Cell:
    """A dataset under a protocol. exclude_seen: None for the dataset's own rule; label: the
    protocol column when two cells share a protocol."""

    dataset: str
    protocol: str
    exclude_seen: bool | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.label or self.protocol}"


CELLS = (
    Cell("movielens-100k", "leave-one-out"),  # seen items excluded: a film is rated once
    Cell("movielens-100k", "leave-one-out", exclude_seen=False, label="leave-one-out-unmasked"),
    Cell("online-retail", "next-basket"),
    Cell("instacart", "last-basket"),
    Cell("online-retail", "basket-completion"),  # its line order is the file's
    Cell("instacart", "in-session"),  # add-to-cart order is real
)
MODELS = (*BASELINES, "stars", "sasrec")
# Grids chosen on validation (first seed; report.run_models). The other models tune inside
# their fit (LambdaMART's tree count, TIFU-KNN's grid, STARS's epochs and calibration).
# Recent popularity gets its live count's half-life. ID-only SASRec gets its learning rate
# tuned; its epochs come from early stopping (patience 8) under a cap of 100: at 40 its best
# epochs were at or near the cap (37 of 40 on MovieLens). The grid reaches 1e-2 because at
# 6cb81a0 MovieLens chose its top, 5e-3 (validation NDCG@10 0.1159 / 0.1246 / 0.1338 for
# 1e-3 / 2.5e-3 / 5e-3); 1e-3, the worst there and the slowest to converge (the costliest
# run of a cell), is left out.
TUNING = {
    "sasrec": {"train.learning_rate": (2.5e-3, 5e-3, 1e-2), "train.epochs": (100,)},
    "recent-popularity": {"half_life_days": LIVE_HALF_LIVES_DAYS},
}


# Each fitted STARS and LambdaMART is also evaluated with places kept after the first 10
# (issue 18): for items new to the shopper (explore places, 2 and 5: about what the
# validation probe needed for twice LambdaMART's explore Recall@20 on Instacart and Online
# Retail) and for products new to the catalogue (2). A shop's trade, reported beside the
# plain ranking, never chosen by a metric.
PLACES = {
    "stars": ((2, "shopper"), (5, "shopper"), (2, "catalogue")),
    "lambdamart": ((2, "shopper"), (5, "shopper")),
}


def is_placed(model: str) -> bool:
    """Whether a record's model is a fitted model evaluated with places (`PLACES`)."""
    return model.endswith(" slots")


def key(record: dict) -> tuple:
    return record["dataset"], record["protocol"], record["model"], record["seed"]


def dirty_files() -> list[str]:
    """Tracked files with uncommitted changes that could change a result."""
    paths = ["src", "benchmarks/quality.py", "pyproject.toml"]
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", *paths],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line[3:] for line in status.splitlines()]


def per_query_path(results: Path, dataset: str, protocol: str) -> Path:
    return results / "per_query" / f"{dataset}-{protocol}.parquet"


def run_cell(
    cell: Cell,
    models: list[str],
    seeds: list[int],
    threads: int,
    out: Path,
    save_models: Path | None = None,
) -> int:
    """Every model on one cell, each saved (`save_cell`) as soon as its seeds are done, so
    a stopped run keeps every finished model; returns the runs made. With `save_models`,
    the fitted models too, under `<save_models>/<cell>/<model>-seed<seed>`."""
    if not models:
        return 0
    dataset = prepare(cell.dataset)
    split = split_dataset(dataset, cell.protocol)
    runs = 0
    for name in models:
        records = run_models(
            dataset,
            cell.protocol,
            [name],
            seeds,
            exclude_seen=cell.exclude_seen,
            split=split,
            progress=False,
            threads=threads,
            tuning=TUNING,
            save_to=None if save_models is None else save_models / cell.name,
            places=PLACES,
        )
        if cell.exclude_seen is False and cell.dataset == "movielens-100k":
            records.append(sanity_record(dataset, split))
        save_cell([r | {"protocol": cell.label or cell.protocol} for r in records], out)
        runs += len(records)
    return runs


def missing_models(
    records: list[dict], cell: Cell, models: list[str], seeds: list[int], commit: str
) -> list[str]:
    """The `models` without a record at `commit` on `cell` for every seed they run with
    (`--resume`). A model runs all its seeds again when one is missing: a tuned model
    chooses its settings with the first."""
    done = {key(r) for r in records if r.get("commit") == commit}
    protocol = cell.label or cell.protocol
    return [
        m
        for m in models
        if any(
            (cell.dataset, protocol, m, s) not in done
            for s in (seeds if is_seeded(m) else seeds[:1])
        )
    ]


def sanity_record(dataset: Dataset, split: Split | BasketSplit) -> dict:
    """Popularity by plain counts, nothing masked (the check against another harness)."""
    started = time.perf_counter()
    model = PopularityRecommender(PopularityConfig(weighted=False))
    model.fit(training_data(dataset, split, exclude_seen=False))
    train_s = time.perf_counter() - started
    record = evaluation_record(model, "popularity-counts", 0, dataset, split, False, train_s)
    return record | {"threads": 1}


def save_cell(records: list[dict], out: Path) -> None:
    """Merge one cell's records into the JSON and its per-query values into the Parquet,
    under a lock on the JSON: runs on different cells can share `out` (each cell has its own
    Parquet file), so two processes can split the cells of one commit between the cores."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge_cell(records, out)


def _merge_cell(records: list[dict], out: Path) -> None:
    frame = per_query_frame(records)
    path = per_query_path(out.parent, records[0]["dataset"], records[0]["protocol"])
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = pd.read_parquet(path)
        replaced = set(zip(frame["model"], frame["seed"], strict=True))
        keep = [(m, s) not in replaced for m, s in zip(old["model"], old["seed"], strict=True)]
        frame = pd.concat([old[keep], frame], ignore_index=True)
    numeric = frame.select_dtypes("float64").columns
    frame[numeric] = frame[numeric].astype(np.float32)  # the metrics; keeps the repo small
    frame.to_parquet(path, index=False, compression="zstd")
    plain = [{k: v for k, v in r.items() if k != "per_query"} for r in records]
    stored = json.loads(out.read_text()) if out.exists() else []
    replaced_keys = {key(r) for r in plain}
    stored = [r for r in stored if key(r) not in replaced_keys] + plain
    out.write_text(json.dumps(sorted(stored, key=key), indent=2) + "\n")


def sanity_lines(records: list[dict]) -> list[str]:
    """The popularity sanity row and whether it holds."""
    rows = [r for r in records if r["model"] == "popularity-counts"]
    if not rows:
        return ["Popularity sanity row: not run (it runs with the MovieLens unmasked cell)."]
    metrics = rows[0]["metrics"]
    held = all(abs(metrics[m] - v) <= SANITY_TOLERANCE for m, v in SANITY.items())
    measured = ", ".join(
        f"{m} {metrics[m]:.4f} (expected {v} ± {SANITY_TOLERANCE})" for m, v in SANITY.items()
    )
    return [
        f"Popularity sanity row (plain counts, MovieLens LOO, nothing masked): {measured}: "
        + ("holds." if held else "**does not hold**.")
    ]


def diagnostic_lines(records: list[dict]) -> list[str]:
    """Each model's diagnostics per cell (mean over seeds; see `Recommender.diagnostics`)."""
    values: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for r in records:
        for name, value in (r.get("diagnostics") or {}).items():
            group = values.setdefault((r["dataset"], r["protocol"], r["model"]), {})
            group.setdefault(name, []).append(value)
    return [
        f"- {dataset} / {protocol}: {model} "
        + ", ".join(f"{name.replace('_', ' ')} {np.mean(v):.4g}" for name, v in group.items())
        for (dataset, protocol, model), group in sorted(values.items())
    ]


def tuning_lines(records: list[dict]) -> list[str]:
    """Per cell and tuned model: what validation chose from its grid."""
    lines = []
    for r in records:
        if not r.get("tuning") or r["seed"] != min(
            o["seed"] for o in records if key(o)[:3] == key(r)[:3]
        ):
            continue
        tried = ", ".join(
            f"{_settings(t['settings'])}: {t['validation_ndcg@10']:.4f}" for t in r["tuning"]
        )
        lines.append(
            f"- {r['dataset']} / {r['protocol']}: {r['model']} kept {_settings(r['settings'])} "
            f"(validation NDCG@10 {tried})"
        )
    return lines


def _settings(settings: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def cell_lines(rows: list[dict]) -> list[str]:
    """Per cell: its strongest baseline and the MDD of STARS's comparison (of the closest
    one without STARS) against the 5% target. The MDD depends on the pair compared: two
    models that often agree need a smaller test set to tell apart."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        cells.setdefault((row["dataset"], row["protocol"]), []).append(row)
    lines = []
    for (dataset, protocol), group in cells.items():
        stars = [r for r in group if r["model"] == "stars"]
        row = stars[0] if stars else min(group, key=lambda r: abs(r["mean_difference"]))
        share = row["minimal_detectable_difference"] / row["baseline_mean"]
        verdict = "meets" if share <= MDD_TARGET else "misses"
        lines.append(
            f"- {dataset} / {protocol}: strongest baseline {row['baseline']} "
            f"({row['metric']} {row['baseline_mean']:.4f}); MDD of {row['model']} against it "
            f"{share:.1%} of that, {verdict} the {MDD_TARGET:.0%} target."
        )
    return lines


def rebuild(records: list[dict], results: Path, docs: Path) -> str:
    """The Markdown section for `docs`: tables, comparisons, figures (written under
    `results`); also writes results/quality.md."""
    frames = [pd.read_parquet(p) for p in sorted((results / "per_query").glob("*.parquet"))]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not frame.empty:  # only the runs whose records are kept
        kept = {key(r) for r in records}
        columns = ["dataset", "protocol", "model", "seed"]
        mask = [tuple(v) in kept for v in frame[columns].itertuples(index=False)]
        frame = frame[mask]
        frame = frame[frame["model"] != "popularity-counts"]
        frame = frame[~frame["model"].map(is_placed)]
    rows = frame_comparisons(frame) if not frame.empty else []
    commits = sorted({r.get("commit", "unknown") for r in records})
    dates = sorted({r.get("date", "-") for r in records})
    machines = sorted({r.get("machine", "-") for r in records})
    plain = [r for r in records if not is_placed(r["model"])]
    figures = write_figures(plain, results / "figures", "quality", rows)
    lines = [
        f"Commit{'s' if len(commits) > 1 else ''}: {', '.join(commits)}"
        + (" (**mixed: rerun the stale cells**)" if len(commits) > 1 else "")
        + f". Dates: {', '.join(dates)}. Machine: {'; '.join(machines)}.",
        "",
        "Every model is fitted on the training events and chooses its hyperparameters, early "
        "stopping and calibration on validation queries shaped like the test ones (whole "
        "baskets under the basket protocols); test numbers are computed once, at the end. "
        "Metrics: mean ± sample std over seeds; ties count by their expected rank. Slice "
        "columns: Recall@K over the targets of that kind (n = queries holding one). Rows "
        "named '+N explore slots' and '+N new-item slots': the same fitted model with N "
        "places after the first 10 kept for the best items new to the shopper, or products "
        "without training events (`PLACES`): the first 10 cannot change, Recall@20 and the "
        "explore and cold columns show the trade; they are left out of the comparisons.",
        "",
        markdown_table(records),
        "",
        "Paired per-query NDCG@10 differences to the strongest baseline of each cell, with "
        "their 95% BCa bootstrap interval over test queries (seeded models: per-query mean "
        "over seeds); MDD: the smallest difference the cell detects with 80% power. A win "
        "needs the interval to exclude 0.",
        "",
        comparison_table(rows) if rows else "(no per-query results yet)",
        "",
        *cell_lines(rows),
        "",
        "Diagnostics (mean over seeds): LambdaMART's candidate recall (the share of test "
        "targets among its candidates, its recall's ceiling); for STARS and SASRec the "
        "validation epoch whose weights were kept, of the epochs run (patience 8; at most 40, "
        "SASRec 100 from 2bef894 on):",
        "",
        *(diagnostic_lines(records) or ["- not recorded by these runs"]),
        "",
        "Chosen on validation from a grid (first seed, kept for every seed):",
        "",
        *(tuning_lines(records) or ["- no grid in these runs"]),
        "",
        *sanity_lines(records),
        "",
        markdown_images(figures, docs.parent),
    ]
    section = "\n".join(lines)
    images = markdown_images(figures, results)
    body = section.replace(lines[-1], images) if figures else section
    (results / "quality.md").write_text(f"# Quality\n\n{body}\n")
    return section


def write_docs(section: str, docs: Path) -> None:
    """Replace the section between the markers in `docs` (added after its title if missing)."""
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        title, _, body = text.partition("\n## ")
        heading = "## Quality: every model on every cell, one commit, paired intervals (issue 17)"
        text = f"{title}\n{heading}\n\n{block}\n\n## {body}"
    docs.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", default=",".join(c.name for c in CELLS))
    parser.add_argument("--models", default=",".join(MODELS), help=f"from {', '.join(MODEL_NAMES)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads each model trains with (1 while other jobs share the cores; "
        "the machine's core count for training times of a run alone)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the Markdown to update")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the tables")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip the models that already have every seed on a cell at this commit "
        "(a run stopped part-way goes on where it stopped)",
    )
    parser.add_argument(
        "--save-models",
        type=Path,
        metavar="DIR",
        help="also save every fitted model under DIR/<dataset>/<protocol>/<model>-seed<seed> "
        "(for probes that load a model rather than train one)",
    )
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="write results from a tree with uncommitted code changes (marked +dirty)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    by_name = {c.name: c for c in CELLS}
    unknown = [n for n in args.cells.split(",") if n not in by_name]
    if unknown:
        parser.error(f"unknown cell(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    models = args.models.split(",")
    bad = [m for m in models if m not in MODEL_NAMES]
    if bad:
        parser.error(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODEL_NAMES)}")
    if not args.table_only:
        dirty = dirty_files()
        if dirty and not args.allow_dirty:
            parser.error(
                "uncommitted changes in " + ", ".join(dirty) + ": results must come from one "
                "commit. Commit (or stash) them, or pass --allow-dirty for a trial run."
            )
        commit = source_revision()
        print(f"commit {commit}, {dt.datetime.now():%Y-%m-%d %H:%M}")
        seeds = [int(s) for s in args.seeds.split(",")]
        for name in args.cells.split(","):
            todo = models
            if args.resume:
                stored = json.loads(args.out.read_text()) if args.out.exists() else []
                todo = missing_models(stored, by_name[name], models, seeds, commit)
                print(f"{name}: done at {commit}: {sorted(set(models) - set(todo)) or 'none'}")
            started = time.perf_counter()
            runs = run_cell(by_name[name], todo, seeds, args.threads, args.out, args.save_models)
            print(f"{name}: {runs} runs in {time.perf_counter() - started:.0f} s")
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    current = {(c.dataset, c.label or c.protocol) for c in CELLS}
    stale = [r for r in records if "recall@10" not in r["metrics"]]  # the old harness's
    if stale:
        print(f"left out {len(stale)} records of the old harness: rerun their models")
    records = sorted(
        (r for r in records if (r["dataset"], r["protocol"]) in current and r not in stale),
        key=key,
    )
    section = rebuild(records, args.out.parent, args.docs)
    write_docs(section, args.docs)
    print(section)


if __name__ == "__main__":
    main()
