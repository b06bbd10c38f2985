"""The online stage (DESIGN 1.5): recommendations from stored sessions, by filtered MIPS.

A request is answered in five steps, each with the model's own score functions:
1. the user's recent events come from the event store (plus any the request carries);
2. the exported encoder turns the last `max_length` of them into u_S, u_L and the gate (a
   returning user with no live session gets the long-term memory computed offline instead);
3. `STARS.retrieval_queries` [u + q(c), 1, calendar offsets of c] is searched in the item
   index, whose rows are [e_i, b_i, onehot(class(i))], under the request's filters;
4. the items the index cannot score in full (recent sales, co-occurrence with the latest
   purchases: `starsrec.serving.live_items`) and the user's own items are scored exactly and
   merged in, and the places kept for new products, if any, are filled (`Slots`);
5. each result is explained (`starsrec.serving.explain`).

Products added with `upsert_items` (`starsrec.serving.product_writes`) get a token from text
and tags alone (like any cold item), go into the index at once and are recommendable by the
next request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from starsrec.data import files
from starsrec.data.calendar import time_parts
from starsrec.data.integrity import (
    CHECKSUMS_KEY,
    ArtifactError,
    read_manifest,
    reindex_remedy,
    retrain_remedy,
    verify,
)
from starsrec.index.item_index import ItemIndex
from starsrec.recommender import Filters, check_filters
from starsrec.serving.catalogue import (  # Product: re-exported for callers of the service
    ItemTable,
    Product,  # noqa: F401
    RequestError,
    item_table,
)
from starsrec.serving.config import ServingConfig
from starsrec.serving.explain import Recommendation, explain, memory_sources
from starsrec.serving.filters import FilterScopes, for_history, placed_top, with_new_item_slots
from starsrec.serving.live_items import (
    LIVE_SEARCH_DEPTH,
    LiveSource,
    StoreLive,
    cooccurrence_terms,
    live_scores,
    sum_terms,
    with_added,
)
from starsrec.serving.own_items import merge_own_items, own_item_scores
from starsrec.serving.product_log import ProductLog
from starsrec.serving.product_tokens import ProductTokenizer
from starsrec.serving.product_writes import ProductWrites
from starsrec.serving.redis_store import RedisEventStore
from starsrec.serving.request import (
    FiltersIn,
    check_event_times,
    check_events,
    check_k,
    request_time,
)
from starsrec.serving.store import Event, EventStore, SQLiteEventStore
from starsrec.stars.batch import dormant_seconds
from starsrec.stars.export import EagerUserEncoder, OnnxUserEncoder, encoder_inputs
from starsrec.stars.recommender import StarsRecommender, tag_vocabulary
from starsrec.stars.sequences import featurize_events

logger = logging.getLogger(__name__)

HISTORY_PREFIX = "history:"  # ids of the events the offline stage seeded the store with


def open_event_store(serving: Path, config: ServingConfig) -> EventStore:
    """The event store `config` names: the serving folder's SQLite file, or its Redis."""
    if config.store_url is None:
        return SQLiteEventStore(serving / files.STORE_FILE)
    return RedisEventStore(config.store_url)


class RecommendationService(ProductWrites):
    """Answers requests for one artifact directory (see module doc); products are put
    with `upsert_items` (see starsrec.serving.product_writes)."""

    def __init__(
        self,
        recommender: StarsRecommender,
        index: ItemIndex,
        store: EventStore,
        items: ItemTable,
        memories: dict[str, np.ndarray],  # user id -> u_L (D,) from the offline stage
        event_types: list[dict],
        exclude_seen: bool,
        encoder: OnnxUserEncoder | EagerUserEncoder,
        config: ServingConfig = ServingConfig(),
        product_log: ProductLog | None = None,
    ) -> None:
        self.recommender = recommender
        self.product_log = product_log  # where acknowledged upserts are made durable
        self.model = recommender._fitted_model()
        self.index = index
        self.store = store
        self.items = items
        self.memories = memories
        self.event_codes = {t["name"]: number for number, t in enumerate(event_types)}
        self.target_types = {t["name"] for t in event_types if t.get("target", True)}
        # The type an event gets when a client omits it: the first target type.
        self.main_event_type = next(
            (t["name"] for t in event_types if t.get("target", True)), event_types[0]["name"]
        )
        self.exclude_seen = exclude_seen  # the dataset's rule, when a request leaves it open
        self.encoder = encoder
        self.config = config
        self.version = 0  # bumped by every catalogue change: keys the filter caches
        self.tag_names = np.array(tag_vocabulary(recommender.config), dtype=object)
        with torch.no_grad():
            self._context_table = self.model.context_table().numpy()  # (24, 7, 12, D) q(c)
        self.tokenizer = ProductTokenizer(recommender)  # tokens for products put live
        self._scopes = FilterScopes()
        self.serving_dir: Path | None = None  # set by `load`: where `reopen_store` opens it
        self._forgets_read = 0  # how far the store's journal of forgets is applied
        self.live: LiveSource = StoreLive(
            lambda: self.store, self.target_types, self.items.row_of, config.live_refresh_s
        )
        self._warm = self.model.item_tokens.warm[1:].numpy() > 0  # trained rows with events
        self._new_items = np.empty(0, dtype=bool)  # (N,) rows without: see `filters`

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        artifact_dir: str | Path,
        config: ServingConfig = ServingConfig(),
        compact_products: bool = True,
    ):
        """Open an artifact whose serving files `starsrec index` has written. A hot reload
        passes compact_products=False: the service it replaces may still log products."""
        torch.set_num_threads(config.threads)  # one thread per serving worker
        root = Path(artifact_dir)
        serving = root / files.SERVING_DIR
        remedy = reindex_remedy(root)
        if not (serving / files.SERVING_FILE).exists():
            raise FileNotFoundError(f"{root} has no serving files: {remedy}")
        meta = read_manifest(serving / files.SERVING_FILE, remedy)
        recommender = StarsRecommender.load(root)  # verifies the model's own checksums
        verify(serving, meta, files.SERVING_FILE, remedy)
        built_for = meta.get("model_checksum")
        # meta.json is the model's: when it is missing, `starsrec index` cannot help.
        model_meta = read_manifest(root / files.META_FILE, retrain_remedy(root))
        model = model_meta.get(CHECKSUMS_KEY, {}).get(files.STATE_FILE)
        if built_for and model and built_for != model:
            raise ArtifactError(
                f"{serving} was built for another training of {root} (model checksum "
                f"differs): {remedy}"
            )
        arrays = load_file(serving / files.MEMORY_FILE)
        memories = dict(zip(meta["users"], arrays["long"], strict=True))
        items = item_table(recommender)
        encoder = (
            OnnxUserEncoder(serving / files.ENCODER_FILE, config.threads)
            if config.use_onnx
            else EagerUserEncoder(recommender._fitted_model())
        )
        service = cls(
            recommender,
            ItemIndex.load(serving / files.INDEX_DIR),
            open_event_store(serving, config),
            items,
            memories,
            meta["event_types"],
            not meta["allow_repeats"],
            encoder,
            config,
        )
        service.serving_dir = serving
        service.follow_forgets()  # users forgotten since the offline stage ran
        # Products put into earlier runs: replayed (latest version each), then the log is
        # rewritten compacted (which also drops a line a crash cut short).
        service.product_log = ProductLog(serving / files.PRODUCTS_FILE)
        service.tokenizer = ProductTokenizer(recommender, serving / files.EMBEDDINGS_DIR)
        products = service.replay_products()
        if compact_products and service.product_log.path.exists():
            service.product_log.compact(products)
        return service

    # -- events -------------------------------------------------------------------------
    def add_events(self, events: Sequence[Event]) -> int:
        """Validate and store events (idempotent on event id); returns how many were new."""
        check_events(events, self.items, self.event_codes)
        check_event_times(events, self.config.max_future_s)
        try:
            added = self.store.append(events)
        except ValueError as error:
            raise RequestError("events", str(error)) from error
        if isinstance(self.live, StoreLive):
            self.live.invalidate()  # this worker's own writes count at its next request
        return added

    def forget(self, user_id: str) -> int:
        """Delete the user's stored events and drop their long-term memory: here at once,
        in every process sharing the store when it next calls `follow_forgets`, and at every
        later load with this store (the artifact keeps the memory until `starsrec index`
        runs without the user's events); returns how many events were deleted."""
        self.memories.pop(user_id, None)
        return self.store.forget(user_id)

    def follow_forgets(self) -> int:
        """Drop the long-term memories of the users forgotten (by any process sharing the
        store) since the last call; returns how many forgets were read."""
        users, self._forgets_read = self.store.forgotten(self._forgets_read)
        for user in users:
            self.memories.pop(user, None)
        return len(users)

    def reopen_store(self) -> None:
        """Open the event store again, as `load` did: a forked worker's own connection (a
        database connection must not cross a fork; the parent closes its own first)."""
        if self.serving_dir is None:
            raise RuntimeError("reopen_store: only a service from `load` knows its store")
        self.store = open_event_store(self.serving_dir, self.config)

    # -- recommending -------------------------------------------------------------------
    def recommend(
        self,
        user_id: str | None = None,
        events: Sequence[Event] = (),
        k: int = 10,
        at: float | None = None,
        filters: Filters | None = None,
    ) -> list[Recommendation]:
        """Top-k items for a user (stored events) and/or an anonymous list of events, at
        time `at` (unix seconds; now when None), under `filters` over this service's rows,
        one query's (None: a request's defaults, `self.filters()`). At most the
        catalogue's size come back. Bad input is refused by `starsrec.serving.request`'s
        checks (RequestError naming the field), never dropped."""
        k = min(check_k(k), self.index.size)
        check_events(events, self.items, self.event_codes)
        at = request_time(at, events, self.config.max_future_s)
        filters = self.filters() if filters is None else filters
        check_filters(filters, 1, len(self.items))
        history, rows, bought = self.history(user_id, events, at)
        query, short, long, gate = self.query_vectors(user_id, history, rows, at)
        allowed = filters.allowed
        ids = filters.exclude[0] if filters.exclude is not None else ()
        exclude = self.items.rows(list(ids), "filters.exclude")
        # The service's seen items are what the user bought: a product only viewed stays
        # recommendable.
        if filters.exclude_seen:
            exclude = np.union1d(exclude, bought)
        # The user's own items are scored exactly, with their repeat bonus, and merged in
        # (`merge_own_items`): the index supplies the best k others (had it returned own
        # items among its k, fewer than k others would be left to merge with them).
        mine = own_item_scores(self.model, self.index.vectors, query, history, rows, at)
        own = mine[0]  # the history's distinct rows; none with the repeat score off
        skip = np.union1d(exclude, own) if len(exclude) else own
        added = self.added_terms(at, bought)

        def top(depth: int, allowed: np.ndarray | None, scope) -> tuple[np.ndarray, np.ndarray]:
            deeper = depth if added is None else max(depth, LIVE_SEARCH_DEPTH)
            (found,), (scores,) = self.index.search(query[None], deeper, allowed, [skip], scope)
            if added is not None:
                found, scores = with_added(
                    found, scores, added, self.index.vectors, query, skip, allowed, depth
                )
            return merge_own_items(found, scores, mine, added, allowed, exclude, depth)

        slots = None if filters.slots is None else for_history(filters.slots, rows)
        if slots is None or slots.count == 0 or k <= slots.after:
            found, scores = top(k, allowed, filters.scope)
        else:
            # The top k + count of all items hold the first places and whatever the placed
            # items must pass; the best new items below the first places are among the top
            # after + count of the new items alone. Placing over both lists is placing over
            # the catalogue (`place_slots`).
            members = slots.items if allowed is None else slots.items & allowed
            found, scores = placed_top(
                top(k + slots.count, allowed, filters.scope),
                top(slots.after + slots.count, members, None),
                slots,
                k,
            )
        memories = memory_sources(self.items.tokens[found], found, rows, short, long, gate)
        return self._explain(found, scores, rows, memories)

    def history(
        self, user_id: str | None, events: Sequence[Event], at: float
    ) -> tuple[list[Event], np.ndarray, np.ndarray]:
        """A request's history, oldest first (stored events, then the request's own,
        checked by `recommend`; none after `at`), its item rows, and the rows of its
        purchases (events of a target type). The store's window ends at `at`, so later
        events cannot crowd out the ones a request may use."""
        limit = self.config.history_limit
        history = list(self.store.recent(user_id, limit, at)) if user_id else []
        history += events
        history = sorted((e for e in history if e.timestamp <= at), key=lambda e: e.timestamp)
        rows = np.array([self.items.row_of[e.item_id] for e in history], dtype=np.int64)
        return history, rows, rows[[e.event_type in self.target_types for e in history]]

    def query_vectors(
        self, user_id: str | None, history: list[Event], rows: np.ndarray, at: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The retrieval query [u + q(c), 1, offsets] and u_S, u_L, g behind it."""
        model = self.model
        calendar = self.recommender._fitted_calendar()
        # (1, K) active events; one always-off column when there are none (as in training)
        active = calendar.active(np.array([int(at)])) if calendar.names else np.zeros((1, 1))
        zeros = np.zeros(model.config.dim, np.float32)
        if not len(history):  # no history: context and popularity (bias, offsets) only
            return self._augment(self._context(at), active), zeros, zeros, zeros
        memory = self.memories.get(user_id) if user_id else None
        gap = at - history[-1].timestamp
        if (
            self.config.use_offline_memory
            and memory is not None
            and model.config.use_dual_memory
            and gap >= dormant_seconds(model.config.use_recency, model.config.session_gap_minutes)
            and all(e.event_id.startswith(HISTORY_PREFIX) for e in history)
        ):
            # A dormant user with no event since the offline pass: u = u_L exactly as the
            # encoder would compute it, so skip the encoder.
            return self._augment(memory + self._context(at), active), zeros, memory, zeros
        window = rows[-model.config.max_length :]
        last = history[-len(window) :]
        batch = featurize_events(
            window[None],
            np.array([[self.event_codes[e.event_type] for e in last]]),
            np.array([[int(e.timestamp) for e in last]]),
            np.array([int(at)]),
            calendar,
            model.config.session_gap_minutes,
        )
        out = self.encoder(encoder_inputs(batch, self.items.tokens[window][None]))
        query = self._augment(out["query"][0], active)
        return query, out["short"][0], out["long"][0], out["gate"][0]

    def added_terms(self, at: float, bought: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows ascending, (R,) terms) the index cannot hold: `STARS.live_score` at `at` plus
        `STARS.cooccurrence_score` with the (H,) `bought` rows, oldest first; None: both 0."""
        live = None
        if self.model.live_weights.any():
            rows, counts = self.live(at)
            # products put since training (rows past the trained ones) are new
            new = np.append(~self._warm, True)[np.minimum(rows, len(self._warm))]
            live = rows, live_scores(self.model, counts, new)
        return sum_terms(live, cooccurrence_terms(self.recommender, bought))

    def _context(self, at: float) -> np.ndarray:
        """q(c) (D,) for a request at `at`, read from the model's table."""
        hour, weekday, month = (int(part[0]) for part in time_parts(np.array([int(at)])))
        return self._context_table[hour, weekday, month]

    @torch.no_grad()
    def _augment(self, query: np.ndarray, active: np.ndarray) -> np.ndarray:
        """The (D + 1 + n_classes) retrieval query of (D,) u + q(c) under (1, K) events."""
        events = torch.from_numpy(np.asarray(active, np.float32))
        return self.model.retrieval_queries(torch.from_numpy(query)[None], events)[0].numpy()

    def filters(self, request: FiltersIn | None = None) -> Filters:
        """A request's filters (None: the defaults) as `Filters` over this service's rows,
        its scope's bitmap cached, with the places kept for new products (no training
        events); a RequestError naming the field for unknown names."""
        request = FiltersIn() if request is None else request
        filters = self._scopes.filters(self.items, self.version, request, self.exclude_seen)
        if len(self._new_items) != len(self.items):  # every product put since training is new
            added = np.ones(len(self.items) - len(self._warm), dtype=bool)
            self._new_items = np.concatenate([~self._warm, added])
        return with_new_item_slots(filters, request, self._new_items, self.config)

    def _explain(
        self, found: np.ndarray, scores: np.ndarray, rows: np.ndarray, memories: list[str]
    ) -> list[Recommendation]:
        max_length = self.model.config.max_length
        return explain(self.items, self.tag_names, max_length, found, scores, rows, memories)

    # -- items --------------------------------------------------------------------------
    def similar(
        self, item_id: str, k: int = 10, in_stock_only: bool = True
    ) -> list[Recommendation]:
        """Items whose tokens have the largest inner product with this item's token."""
        k = check_k(k)
        if item_id not in self.items.row_of:
            raise RequestError("item_id", f"item_id: unknown item {item_id!r}", status=404)
        row = self.items.row_of[item_id]
        query = np.zeros(self.index.dim, np.float32)
        query[: self.model.config.dim] = self.items.tokens[row]
        filters = self.filters(FiltersIn(in_stock_only=in_stock_only))
        found, scores = self.index.search(
            query[None], k, filters.allowed, [np.array([row])], filters.scope
        )
        keep = found[0] >= 0
        found = found[0][keep]
        return self._explain(found, scores[0][keep], np.array([row]), ["similar"] * len(found))
