"""Training scale benchmark: the same STARS config trained with 1 and 2 local processes
(`starsrec train --nproc N`, DistributedDataParallel over gloo on CPU).

    python benchmarks/training_scale.py                       # MovieLens-100K, 3 epochs
    python benchmarks/training_scale.py --procs 1 2 4 --epochs 5

Prepares `data/movielens-100k` when it is missing. A one-epoch warm-up run first fills the
text-embedding cache, so the timed runs measure training only. Per run it reads the
artifact's training history: training events/s (target events over the epochs' training
seconds, validation excluded), that rate per process, wall time of the whole command
(start-up, features, validation, writing included) and the best validation NDCG@10.
Writes benchmarks/results/training_scale.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from starsrec.experiments.report import machine_description, source_revision

RESULTS = Path(__file__).parent / "results"
logger = logging.getLogger("training-scale-benchmark")


def starsrec(*argv: str) -> None:
    """Run `starsrec *argv` in a fresh process with one thread per process."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "starsrec.cli", *argv], env=env, check=True)


def train_run(data: Path, procs: int, epochs: int, overrides: list[str], out: Path) -> dict:
    """Train with `procs` processes; the run's record."""
    settings = [f"train.epochs={epochs}", "train.patience=1000", "train.progress=false"]
    argv = ["train", str(data), "--nproc", str(procs), "--out", str(out)]
    for value in [*settings, *overrides]:
        argv += ["--set", value]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    starsrec(*argv)
    wall = time.perf_counter() - started
    meta = json.loads((out / "meta.json").read_text())
    events = sum(h["events"] for h in meta["history"])
    seconds = sum(h["seconds"] for h in meta["history"])
    return {
        "procs": procs,
        "epochs": len(meta["history"]),
        "events": events,
        "train_seconds": round(seconds, 2),
        "events_per_s": round(events / seconds, 1),
        "events_per_s_per_proc": round(events / seconds / procs, 1),
        "wall_s": round(wall, 1),
        "validation_ndcg@10": round(meta["validation_ndcg@10"], 4),
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/movielens-100k"))
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="extra config overrides"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "training_scale.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not (args.data / "events.parquet").exists():
        starsrec("data", "prepare", "movielens-100k", "--out", str(args.data))
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        logger.info("warm-up: one epoch to fill the text-embedding cache")
        train_run(args.data, 1, 1, args.overrides, Path(scratch) / "warm-up")
        for procs in args.procs:
            logger.info("training with %d process(es)", procs)
            runs.append(
                train_run(args.data, procs, args.epochs, args.overrides, Path(scratch) / str(procs))
            )
    record = {
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "revision": source_revision(),
        "dataset": str(args.data),
        "overrides": args.overrides,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    base = runs[0]["events_per_s"]
    print(f"\n{record['machine']}, {args.data}, {args.epochs} epochs")
    print("procs | events/s | per proc | speed-up | wall s | val ndcg@10 | load before/after")
    for run in runs:
        print(
            f"{run['procs']:5d} | {run['events_per_s']:8.0f} | {run['events_per_s_per_proc']:8.0f}"
            f" | {run['events_per_s'] / base:7.2f}x | {run['wall_s']:6.1f}"
            f" | {run['validation_ndcg@10']:11.4f}"
            f" | {run['load_1min_before']:.2f}/{run['load_1min_after']:.2f}"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
