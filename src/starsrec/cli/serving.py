"""`starsrec index` and `starsrec serve`: their arguments and how each runs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from starsrec.stars import distributed
from starsrec.web.server import add_serve_arguments

EXAMPLES = {
    "index": (
        "example: starsrec index artifacts/movielens\n\n"
        "sharded, one job per shard on any machines sharing the artifact directory, then "
        "the merge:\n"
        "  starsrec index artifacts/shop --shards 8 --shard 0   # ... --shard 7\n"
        "  starsrec index artifacts/shop                        # merges, builds serving/\n"
        "the same as 4 local torchrun ranks (or torchrun -m starsrec.cli index ... on "
        "several nodes):\n"
        "  starsrec index artifacts/shop --nproc 4"
    ),
    "serve": (
        "example: starsrec serve artifacts/movielens --host 127.0.0.1 --port 8000, then open "
        "http://127.0.0.1:8000/ (the explorer page) or http://127.0.0.1:8000/docs (the API). "
        "Writes (events, products, reload) need the API key in $STARSREC_API_KEY (the page "
        "has a field for it); on a machine of your own, --insecure-open-writes opens them "
        "without one"
    ),
}


def add_device_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """`--device auto|cpu|cuda[:N]` on `parser`: the device to `what`."""
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help=f"the device to {what}: auto (a GPU when torch sees one, else the CPU; the "
        "default), cpu, cuda or cuda:N",
    )


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add the `index` and `serve` commands to the `starsrec` parser's `commands`."""
    index = commands.add_parser(
        "index",
        help="offline stage: item index, user memories, event store and exported encoder "
        "inside the artifact",
        epilog=EXAMPLES["index"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    index.add_argument("artifact_dir", help="an artifact from `starsrec train`")
    index.add_argument("--data", help="the prepared dataset (default: the one it was trained on)")
    index.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="compute only the item vectors and user memories of shard --shard of N",
    )
    index.add_argument("--shard", type=int, metavar="I", help="which shard, 0 to N - 1")
    index.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="compute N shards as N local processes under torchrun, then merge",
    )
    add_device_argument(index, "compute item vectors and user memories on")

    serve = commands.add_parser(
        "serve",
        help="serve an indexed artifact over HTTP: the API, and the explorer page at /",
        description="Serve an indexed artifact over HTTP: the JSON API under /v1 and the "
        "explorer page at / (pick a shopper, add items to their session, set the date, add "
        "products and see the recommendations move).",
        epilog=EXAMPLES["serve"],
    )
    add_serve_arguments(serve)


def run_serve(args: argparse.Namespace) -> int:
    """`starsrec serve` (see `starsrec.web.server.run_serve`)."""
    from starsrec.web.server import run_serve as serve  # uvicorn and the service: to serve

    return serve(args)


def run_index(args: argparse.Namespace, relaunch_argv: Sequence[str]) -> int:
    """`starsrec index`: whole, one shard, sharded under torchrun, or merging shards
    (`relaunch_argv`: this command line less --nproc, for the torchrun workers)."""
    from shutil import rmtree

    from starsrec.serving import shards as offline_shards
    from starsrec.serving.offline import build_serving

    root = args.artifact_dir
    if (args.shards is None) != (args.shard is None):
        raise ValueError("--shards N and --shard I go together")
    if args.nproc > 1 and not distributed.launched_by_torchrun():
        return distributed.relaunch(args.nproc, list(relaunch_argv))
    rank = distributed.init_from_environment()
    device = args.device or "auto"
    if rank.distributed:
        try:
            if rank.is_main:  # shards of an earlier, different split must not be merged
                rmtree(f"{root}/{offline_shards.SHARDS_DIR}", ignore_errors=True)
            distributed.barrier()
            offline_shards.compute_shard(
                root, rank.world_size, rank.rank, args.data, progress=rank.is_main, device=device
            )
            distributed.barrier()
        finally:
            distributed.shutdown()
        if not rank.is_main:
            return 0
        out = offline_shards.build_serving_from_shards(root, args.data)
    elif args.shards is not None:
        path = offline_shards.compute_shard(root, args.shards, args.shard, args.data, device=device)
        print(f"wrote {path}; once all {args.shards} shards exist: starsrec index {root}")
        return 0
    elif offline_shards.has_shards(root):
        out = offline_shards.build_serving_from_shards(root, args.data)
    else:
        out = build_serving(root, args.data, device=device)
    print(f"wrote {out}/; start the service with: starsrec serve {root}")
    return 0
