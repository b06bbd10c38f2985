"""`starsrec serve`: its options, the checks before it starts, and the server it runs.

`add_serve_arguments` declares the options on the CLI's `serve` parser; `run_serve` checks
the access settings and the limits, loads the artifact (so a refusal is one line, not a
traceback from inside the server) and runs uvicorn with the connection deadlines of
`starsrec.web.connections`. Heavy imports (uvicorn, the service) happen in `run_serve`, so
building the CLI's parser stays quick.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from collections.abc import Callable
from socket import socket
from typing import TYPE_CHECKING

from starsrec.recommender import NEW_TO
from starsrec.serving.config import ServingConfig
from starsrec.web import workers as forked  # the standard library only: quick to import
from starsrec.web.access import is_loopback

if TYPE_CHECKING:  # imported where they run: building the CLI's parser stays quick
    from fastapi import FastAPI

    from starsrec.serving.service import RecommendationService

DEFAULTS = ServingConfig()
HEADER_TIMEOUT_S = 10.0  # a request's headers, from the connection (or its first byte)
BODY_TIMEOUT_S = 30.0  # a body the app reads, from the first read: 1 MiB at 35 KB/s
KEEP_ALIVE_S = 5  # an idle kept-alive connection (uvicorn's default, stated)
MAX_HEADER_BYTES = 16_384  # h11's limit on an incomplete request head (its default, stated)
SWITCH_INTERVAL_S = 0.001  # the GIL's hand-over interval in the server (Python's is 5 ms)


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """Declare `starsrec serve`'s arguments on its parser."""
    serve.add_argument("artifact_dir", help="an artifact indexed by `starsrec index`")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes answering requests, sharing the loaded artifact (default: the "
        "machine's cores; see starsrec.web.workers)",
    )
    serve.add_argument(
        "--api-key-env",
        default="STARSREC_API_KEY",
        help="environment variable holding the API key that writes need, 16 characters or "
        "more (default STARSREC_API_KEY; unset = no key: writes refused, and only loopback "
        "served). Never pass keys on the command line.",
    )
    serve.add_argument("--protect-reads", action="store_true", help="reads need the API key too")
    serve.add_argument(
        "--insecure-open-writes",
        action="store_true",
        help="without an API key, let anyone who can reach the server post events, put "
        "products and reload (default: writes need the key; loopback only; a warning is "
        "logged at start)",
    )
    serve.add_argument(
        "--max-clock-skew",
        type=float,
        default=DEFAULTS.max_future_s,
        metavar="SECONDS",
        help="refuse event and request times later than the server's clock plus SECONDS "
        "(default a day)",
    )
    serve.add_argument(
        "--max-added-products",
        type=int,
        default=DEFAULTS.max_added_products,
        metavar="N",
        help="products the service may take beyond its trained catalogue; new ones past it "
        f"are refused with 409 (default {DEFAULTS.max_added_products})",
    )
    serve.add_argument(
        "--max-products-per-request",
        type=int,
        default=DEFAULTS.max_products_per_request,
        metavar="N",
        help=f"products one PUT /v1/items may carry (default {DEFAULTS.max_products_per_request})",
    )
    serve.add_argument(
        "--new-item-slots",
        type=int,
        default=DEFAULTS.new_item_slots,
        metavar="N",
        help=f"keep N places after the first {DEFAULTS.new_item_slots_after} for the best "
        "new items (a request's filters.new_item_slots overrides it; "
        f"default {DEFAULTS.new_item_slots}: the model's own ranking)",
    )
    serve.add_argument(
        "--new-to",
        choices=NEW_TO,
        default=DEFAULTS.new_to,
        help="which items those places are for: new to the catalogue (products without "
        "training events; the default) or new to the shopper (not in their history: explore "
        "places); a request's filters.new_to overrides it",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=HEADER_TIMEOUT_S,
        metavar="SECONDS",
        help="answer 408 and close a connection whose request headers are not complete "
        f"within SECONDS (default {HEADER_TIMEOUT_S:g})",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=BODY_TIMEOUT_S,
        metavar="SECONDS",
        help="answer 408 to a request whose body has not all arrived SECONDS after it is "
        f"first read (default {BODY_TIMEOUT_S:g})",
    )
    serve.add_argument(
        "--store-url",
        metavar="URL",
        help="shared Redis event store for several replicas, e.g. redis://127.0.0.1:6379/0 "
        "(default: the artifact's SQLite file)",
    )


def serving_config(args: argparse.Namespace) -> ServingConfig:
    """The ServingConfig `serve`'s options ask for; ValueError naming a bad option."""
    if not args.max_clock_skew >= 0:
        raise ValueError(f"--max-clock-skew must be >= 0 seconds, got {args.max_clock_skew}")
    if args.max_added_products < 0:
        raise ValueError(f"--max-added-products must be >= 0, got {args.max_added_products}")
    if args.new_item_slots < 0:
        raise ValueError(f"--new-item-slots must be >= 0, got {args.new_item_slots}")
    if args.max_products_per_request < 1:
        raise ValueError(
            f"--max-products-per-request must be >= 1, got {args.max_products_per_request}"
        )
    for option, seconds in (
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
    ):
        if not seconds > 0:
            raise ValueError(f"{option} must be > 0 seconds, got {seconds}")
    return ServingConfig(
        store_url=args.store_url,
        max_future_s=args.max_clock_skew,
        max_added_products=args.max_added_products,
        max_products_per_request=args.max_products_per_request,
        new_item_slots=args.new_item_slots,
        new_to=args.new_to,
    )


def run_serve(args: argparse.Namespace) -> int:
    """`starsrec serve`: check the access settings and limits, load the artifact, then
    serve until stopped, in one process or `--workers` (starsrec.web.workers); ValueError
    (one line) for a refused start."""
    from starsrec.serving.service import RecommendationService
    from starsrec.web.access import Access
    from starsrec.web.app import create_app

    key = os.environ.get(args.api_key_env) or None
    if args.protect_reads and key is None:
        raise ValueError(f"--protect-reads needs an API key in ${args.api_key_env}")
    Access(key, args.protect_reads, args.insecure_open_writes)  # a short key, contradictions
    if key is None and not is_loopback(args.host):
        raise ValueError(
            f"--host {args.host} is not a loopback address: serving beyond this machine needs "
            f"an API key in ${args.api_key_env} (16 characters or more)"
        )
    config = serving_config(args)
    count = (os.cpu_count() or 1) if args.workers is None else args.workers
    if count < 1:
        raise ValueError(f"--workers must be >= 1, got {count}")

    def app(service: RecommendationService, on_reload: Callable[[], object] | None) -> FastAPI:
        return create_app(
            service,
            reload_from=args.artifact_dir,
            api_key=key,
            protect_reads=args.protect_reads,
            insecure_open_writes=args.insecure_open_writes,
            body_timeout_s=args.body_timeout,
            on_reload=on_reload,
        )

    def load() -> RecommendationService:
        service = RecommendationService.load(args.artifact_dir, config)
        if count > 1 and (key is not None or args.insecure_open_writes):
            service.tokenizer.load_encoder()  # before the fork: one copy, shared
        return service

    return serve_service(load, app, args.host, args.port, count, args.header_timeout)


def serve_service(
    load: Callable[[], RecommendationService],
    app: Callable[[RecommendationService, Callable[[], object] | None], FastAPI],
    host: str,
    port: int,
    workers: int = 1,
    header_timeout_s: float = HEADER_TIMEOUT_S,
) -> int:
    """Serve `app(service, on_reload)` for the service `load()` gives on host:port until
    stopped, in this process or in `workers` forked ones; returns the exit status. Closes
    the service's store."""
    # Signals held before loading starts threads (starsrec.web.workers), given back after.
    with forked.held_signals() if workers > 1 else contextlib.nullcontext():
        return _serve(load(), app, host, port, workers, header_timeout_s)


def _serve(
    service: RecommendationService,
    app: Callable[[RecommendationService, Callable[[], object] | None], FastAPI],
    host: str,
    port: int,
    workers: int,
    header_timeout_s: float,
) -> int:
    import uvicorn

    from starsrec.web.connections import deadline_protocol, handed_server

    def run(on_reload: Callable[[], object] | None = None, channel: socket | None = None) -> None:
        config = uvicorn.Config(
            app(service, on_reload),
            host=host,
            port=port,
            log_level="warning",
            http=deadline_protocol(header_timeout_s),
            timeout_keep_alive=KEEP_ALIVE_S,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        )
        if channel is None:
            uvicorn.Server(config).run()
        else:
            handed_server(config, channel).run()

    # What loading made (model, catalogue, index) lives as long as the process: frozen out
    # of the collector, a full collection no longer walks it (those took /healthz to
    # hundreds of ms while a flood of bodies allocated, benchmarks/hostile.py), and forked
    # workers keep sharing its pages. A product write's worker thread holds the GIL in
    # short steps (tagging, tokens), and the event loop waits up to the switch interval for
    # it each time (5 ms by default).
    interval = sys.getswitchinterval()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        if workers == 1:
            run()
            return 0
        listener = forked.listening_socket(host, port)
        service.store.close()  # each worker opens its own

        def run_worker(number: int, channel: socket) -> None:
            service.reopen_store()
            try:
                run(forked.notify_parent, channel)
            finally:
                service.store.close()

        return forked.serve_workers(run_worker, listener, workers)
    finally:  # as it was, for a caller that goes on (tests, embedding)
        sys.setswitchinterval(interval)
        gc.unfreeze()
        service.store.close()
