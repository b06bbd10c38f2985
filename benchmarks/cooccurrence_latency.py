"""What the co-occurrence term costs a request (issue 18): in-process latency, term on and off.

    python benchmarks/cooccurrence_latency.py ARTIFACT    # after `starsrec index ARTIFACT`

Loads the service of an artifact whose calibration gave co-occurrence a weight, then answers
the same stored users' requests (top 10, one thread) with that weight and with 0, each user
once per setting back to back, so both settings meet the same machine load; the first pass
over the users warms the caches and is not counted. Writes
benchmarks/results/cooccurrence_latency.json (one record per artifact) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import torch

from starsrec.experiments.report import machine_description, source_revision
from starsrec.serving.config import ServingConfig
from starsrec.serving.service import RecommendationService

RESULTS = Path(__file__).parent / "results" / "cooccurrence_latency.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--at", type=float, help="request time (default: the last event's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    service = RecommendationService.load(args.artifact, ServingConfig(threads=1))
    weight = float(service.model.cooccurrence_weight)
    if weight == 0:
        raise SystemExit(f"{args.artifact}: calibration gave co-occurrence no weight")
    users = list(service.memories)[: args.users]
    at = args.at or max(e.timestamp for u in users for e in service.store.recent(u, 1))
    times: dict[float, list[float]] = {weight: [], 0.0: []}
    for rep in range(2):
        for user in users:
            for w in times:
                service.model.cooccurrence_weight.fill_(w)
                started = time.perf_counter()
                service.recommend(user, k=10, at=at)
                if rep:
                    times[w].append(1e3 * (time.perf_counter() - started))
    service.model.cooccurrence_weight.fill_(weight)
    record = {"artifact": str(args.artifact), "users": len(users), "weight": weight}
    for name, w in (("on", weight), ("off", 0.0)):
        record[f"{name}_p50_ms"] = float(np.percentile(times[w], 50))
        record[f"{name}_p99_ms"] = float(np.percentile(times[w], 99))
    record |= {
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "commit": source_revision(),
    }
    stored = json.loads(args.out.read_text()) if args.out.exists() else []
    stored = [r for r in stored if r["artifact"] != record["artifact"]] + [record]
    args.out.write_text(json.dumps(stored, indent=2) + "\n")
    print("| artifact | w | p50 on / off (ms) | p99 on / off (ms) |\n|---|---|---|---|")
    for r in stored:
        print(
            f"| {r['artifact']} | {r['weight']:g} | {r['on_p50_ms']:.2f} / {r['off_p50_ms']:.2f} "
            f"| {r['on_p99_ms']:.2f} / {r['off_p99_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
