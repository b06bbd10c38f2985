"""What the benchmarks that study one trained STARS on one cell share: the cell's data and
the model (trained with the quality run's settings, or loaded), and the results file that
keeps one record per cell and seed, each stamped with its date, machine and commit."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path

import torch

from starsrec.data.loaders import prepare
from starsrec.data.splits import BasketSplit, Split, split_dataset
from starsrec.experiments.report import (
    machine_description,
    make_model,
    source_revision,
    training_data,
)
from starsrec.recommender import TrainingData
from starsrec.stars.recommender import StarsRecommender


def stars_on_cell(
    description: str, out: Path
) -> tuple[argparse.Namespace, StarsRecommender, TrainingData, Split | BasketSplit]:
    """A benchmark's command line (--dataset, --protocol, --seed, --artifact, --save,
    --threads and --out, by default `out`) and what it asks for: (the arguments, STARS, its
    training data, the split), STARS trained with the seed as the quality run trains it (and
    saved to --save, for another benchmark's --artifact), or loaded from --artifact (a model
    trained on the same cell). Logs at INFO."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", default="online-retail")
    parser.add_argument("--protocol", default="next-basket")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--artifact", type=Path, help="a STARS model trained on this cell")
    parser.add_argument("--save", type=Path, help="where to save the model trained here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    dataset = prepare(args.dataset)
    split = split_dataset(dataset, args.protocol)
    data = training_data(dataset, split, dataset.exclude_seen)
    if args.artifact is not None:
        return args, StarsRecommender.load(args.artifact), data, split
    model = make_model("stars", args.seed, args.threads, {}).fit(data)
    assert isinstance(model, StarsRecommender)
    if args.save is not None:
        model.save(args.save, {"cell": f"{args.dataset}/{args.protocol}", "seed": args.seed})
    return args, model, data, split


def save_by_cell_and_seed(path: Path, record: dict) -> list[dict]:
    """Stamp `record` (with "cell" and "seed") with the date, machine and commit, put it in
    the JSON list at `path` in place of any record of the same cell and seed, and return
    the list."""
    record = record | {
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "commit": source_revision(),
    }
    stored = json.loads(path.read_text()) if path.exists() else []
    same = (record["cell"], record["seed"])
    stored = [r for r in stored if (r["cell"], r["seed"]) != same] + [record]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=2, default=lambda value: value.item()) + "\n")
    return stored
