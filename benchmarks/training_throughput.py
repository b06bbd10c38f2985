"""Training throughput (issue 21): events/s and peak memory of STARS training epochs.

    python benchmarks/training_throughput.py                      # the issue's sizes
    python benchmarks/training_throughput.py --baseline d6e5f24 \\
        --scaling-events 100000 300000 1000000 --scaling-items 100000 1000000

Real data: each prepared dataset (`--data`; MovieLens-100K and Online Retail are prepared
when missing) trained `--epochs` with the default STARS config, on the CPU at each of
`--threads` torch threads, and on the GPU where torch sees one (else a line says there was
none). `--baseline REV` runs the 1-thread CPU rows again with the src/ of commit REV (`git
archive`) in the same run, alternating with this checkout's, for before/after ratios.

Synthetic scaling: generated shops of E events over N items (Zipf popularity, 30 events a
user, 16 classes and 256 subclasses, texts from a small vocabulary through the hashing
encoder, no lexicon tags), one epoch at 1 thread without validation: seconds per epoch and
peak memory against E at the smallest N, and against N at the smallest E, as a table and
a log-log figure. Every size is a flag: run the small ones on a small machine.

Every measurement is a fresh process (`--worker`): peak memory is its peak RSS (and the
peak GPU allocation on a GPU), events/s the epochs' target events over their training
seconds (validation excluded). Writes benchmarks/results/training_throughput.json and
benchmarks/results/figures/training-throughput-scaling.png, and prints the tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
DATASETS = {"movielens-100k": "data/movielens-100k", "online-retail": "data/online-retail"}
logger = logging.getLogger("training-throughput-benchmark")


def synthetic_shop(events: int, items: int, seed: int = 0):
    """(catalogue, event log) of a generated shop (see module doc), built as arrays."""
    import pandas as pd

    from starsrec.data.dataset import EventType
    from starsrec.data.interactions import Catalogue, EventLog

    rng = np.random.default_rng(seed)
    users = max(events // 30, 1)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    item = np.searchsorted(np.cumsum(popularity / popularity.sum()), rng.random(events))
    user = np.sort(rng.integers(0, users, events))
    start = int(pd.Timestamp("2024-01-01").timestamp())
    stamp = start + rng.integers(0, 365 * 86400, events)
    order = np.lexsort((stamp, user))
    words = (["red", "blue", "green", "white", "black"], ["mug", "bag", "lamp", "card"])
    texts = np.array([f"{a} {b} {k}" for a in words[0] for b in words[1] for k in range(50)])
    index = np.arange(items)
    catalogue = Catalogue(
        item_ids=index.astype(str),
        texts=texts[index % len(texts)],
        item_class=(index % 16).astype(np.int32),
        class_names=tuple(f"c{c}" for c in range(16)),
        subclass=(index % 256).astype(np.int32),
        subclass_names=tuple(f"s{s}" for s in range(256)),
    )
    counts = np.bincount(user, minlength=users)
    log = EventLog(
        user=user.astype(np.int64),
        item=np.minimum(item, items - 1)[order].astype(np.int64),
        timestamp=stamp[order].astype(np.int64),
        event_type=np.zeros(events, np.int16),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        user_ids=np.arange(users).astype(str),
        event_types=(EventType("purchase"),),
    )
    return catalogue, log


def worker(spec: dict) -> dict:
    """Train as `spec` says in this process; the measurement (see module doc)."""
    import torch

    from starsrec.experiments.artifact import load_config
    from starsrec.recommender import TrainingData
    from starsrec.stars.recommender import StarsRecommender, item_features

    settings = [*spec.get("overrides", []), f"train.epochs={spec['epochs']}"]
    settings += ["train.patience=1000", "train.progress=false", f"train.threads={spec['threads']}"]
    if spec.get("device"):
        settings.append(f"train.device={spec['device']}")
    started = time.perf_counter()
    if "data" in spec:
        from starsrec.data.dataset import load_prepared
        from starsrec.data.splits import default_protocol, split_dataset
        from starsrec.experiments.report import training_data

        dataset = load_prepared(spec["data"])
        split = split_dataset(dataset, default_protocol(dataset))
        # The baseline's src (before issue 16's one name) calls it allow_repeats.
        exclude_seen = getattr(dataset, "exclude_seen", None)
        if exclude_seen is None:
            exclude_seen = not dataset.allow_repeats
        data = training_data(dataset, split, exclude_seen)
        config = load_config(None, settings)
        if spec.get("features_only"):  # fills the text-embedding cache
            item_features(data.catalogue, config)
            return {}
    else:
        catalogue, log = synthetic_shop(spec["events"], spec["items"])
        data = TrainingData(log, catalogue, "GB")
        fast = ["text_encoder=hashing", "use_lexicon_tags=false", "embedding_cache=null"]
        config = load_config(None, [*settings, *fast])
    model = StarsRecommender(config)
    model.fit(data)
    state = model.training_state
    assert state is not None
    events = sum(h["events"] for h in state.history)
    seconds = sum(h["seconds"] for h in state.history)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "trained_events": events,  # target events of the epochs (a spec's "events": generated)
        "epochs": len(state.history),
        "train_s": round(seconds, 2),
        "events_per_s": round(events / seconds, 1),
        "validation_ndcg@10": round(state.history[-1]["validation"], 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mib": None if gpu is None else round(gpu, 1),
        "process_s": round(time.perf_counter() - started, 1),
    }


def measure(spec: dict, src: Path | None = None) -> dict:
    """`worker(spec)` in a fresh process, with `src` (default this checkout's) first on
    the path; the spec, the measurement and the load average around it."""
    threads = str(spec["threads"])
    env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(src or ROOT / "src")}
    load = os.getloadavg()[0]
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    output = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if output.returncode:
        raise RuntimeError(f"worker {spec} failed:\n{output.stderr[-3000:]}")
    result = json.loads(output.stdout.strip().splitlines()[-1])
    load_after = round(os.getloadavg()[0], 2)
    return {**spec, **result, "load_1min_before": round(load, 2), "load_1min_after": load_after}


def baseline_src(revision: str, scratch: Path) -> Path:
    """src/ of commit `revision`, extracted under `scratch`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "src"],
        capture_output=True,
        check=True,
    ).stdout
    tar = scratch / "baseline.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as handle:
        handle.extractall(scratch, filter="data")
    return scratch / "src"


def real_data_rows(args: argparse.Namespace, scratch: Path) -> list[dict]:
    """Every real-data measurement (see module doc)."""
    import torch

    before = baseline_src(args.baseline, scratch) if args.baseline else None
    rows = []
    for data in args.data:
        base = {"data": str(data), "epochs": args.epochs}
        measure({**base, "threads": 1, "features_only": True})
        for repeat in range(args.repeats):
            for threads in args.threads:
                logger.info("%s: CPU, %d thread(s), repeat %d", data.name, threads, repeat + 1)
                row = measure({**base, "threads": threads, "device": "cpu"})
                rows.append({**row, "code": "this", "device": "cpu"})
                if before is not None and threads == 1:
                    logger.info("%s: CPU, 1 thread, baseline %s", data.name, args.baseline)
                    row = measure({**base, "threads": 1}, src=before)
                    rows.append({**row, "code": args.baseline, "device": "cpu"})
        if torch.cuda.is_available():
            logger.info("%s: GPU", data.name)
            rows.append({**measure({**base, "threads": 1, "device": "cuda"}), "code": "this"})
    return rows


def scaling_rows(args: argparse.Namespace) -> list[dict]:
    """The synthetic grid: events at the fewest items, items at the fewest events."""
    sizes = [(e, min(args.scaling_items)) for e in sorted(args.scaling_events)]
    sizes += [(min(args.scaling_events), n) for n in sorted(args.scaling_items)[1:]]
    rows = []
    for events, items in sizes:
        logger.info("synthetic: %d events, %d items", events, items)
        spec = {"events": events, "items": items, "epochs": 1, "threads": 1, "device": "cpu"}
        rows.append(measure(spec))
    return rows


def print_tables(record: dict) -> None:
    """The record's rows as Markdown tables (as docs/benchmarks.md shows them)."""
    print(f"\n{record['machine']}; torch {record['torch']}; GPU: {record['gpu'] or 'none'}")
    print("\n| dataset | code | device | threads | events/s | epoch s | peak RSS MiB | load |")
    print("|---|---|---|---|---|---|---|---|")
    for row in record["datasets"]:
        print(
            f"| {Path(row['data']).name} | {row['code']} | {row['device']} | {row['threads']}"
            f" | {row['events_per_s']:,.0f} | {row['train_s'] / row['epochs']:.1f}"
            f" | {row['peak_rss_mib']:,.0f} | {row['load_1min_before']}/{row['load_1min_after']} |"
        )
    for data, ratio in record["speedups"].items():
        print(f"\n{data}: {ratio:.2f}x the events/s of {record['baseline']} (1 thread, best)")
    if not record["gpu"]:
        print("\nno GPU rows: torch.cuda.is_available() is False on this machine")
    print("\n| events | items | epoch s | events/s | peak RSS MiB | process s |")
    print("|---|---|---|---|---|---|")
    for row in record["scaling"]:
        print(
            f"| {row['events']:,} | {row['items']:,} | {row['train_s']:.1f}"
            f" | {row['events_per_s']:,.0f} | {row['peak_rss_mib']:,.0f} | {row['process_s']} |"
        )


def speedups(rows: list[dict], baseline: str | None) -> dict[str, float]:
    """Per dataset: the best 1-thread CPU events/s of this code over the baseline's."""
    out = {}
    for data in {row["data"] for row in rows}:
        best = {}
        for row in rows:
            if row["data"] == data and row["threads"] == 1 and row["device"] == "cpu":
                best[row["code"]] = max(best.get(row["code"], 0), row["events_per_s"])
        if baseline in best and "this" in best:
            out[Path(data).name] = round(best["this"] / best[baseline], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    default_data = [Path(p) for p in DATASETS.values()]
    parser.add_argument("--data", type=Path, nargs="*", default=default_data)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1, help="real-data rows, best kept")
    parser.add_argument("--baseline", metavar="REV", help="a commit to compare with")
    parser.add_argument("--scaling-events", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument(
        "--scaling-items", type=int, nargs="*", default=[100_000, 1_000_000, 10_000_000]
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "training_throughput.json")
    args = parser.parse_args()
    if args.worker:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(worker(json.loads(args.worker))))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    from starsrec.experiments.plots import scaling_loglog
    from starsrec.experiments.report import machine_description, source_revision

    for data in args.data:
        if not (data / "events.parquet").exists() and data.name in DATASETS:
            command = [sys.executable, "-m", "starsrec.cli", "data", "prepare", data.name]
            subprocess.run([*command, "--out", str(data)], check=True, cwd=ROOT)
    with tempfile.TemporaryDirectory() as scratch:
        rows = real_data_rows(args, Path(scratch))
    scaling = scaling_rows(args) if args.scaling_events and args.scaling_items else []
    record = {
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "revision": source_revision(),
        "baseline": args.baseline,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "datasets": rows,
        "speedups": speedups(rows, args.baseline),
        "scaling": scaling,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    if scaling:
        figure = args.out.parent / "figures" / "training-throughput-scaling.png"
        scaling_loglog(scaling, figure, f"STARS training, one epoch, 1 thread ({record['date']})")
    print_tables(record)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
