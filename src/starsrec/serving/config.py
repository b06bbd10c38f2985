"""`ServingConfig`: how the online service reads events, encodes users and searches."""

from __future__ import annotations

from dataclasses import dataclass, field

from starsrec.index.config import IndexConfig
from starsrec.recommender import NEW_TO


@dataclass(frozen=True)
class ServingConfig:
    """Online settings. history_limit: stored events read per request (repeat counts and
    already-purchased exclusions look this far back)."""

    history_limit: int = 500
    threads: int = 1
    use_onnx: bool = True
    use_offline_memory: bool = True
    index: IndexConfig = field(default_factory=IndexConfig)
    # None: the artifact's SQLite event store; a redis:// URL: a Redis store shared by several
    # replicas (live events only: see starsrec.serving.redis_store).
    store_url: str | None = None
    # The latest event or request time accepted, in seconds after the server's clock (None:
    # no bound); later ones are refused, so no client can fill a user's window with the future.
    max_future_s: float | None = 86_400.0
    # How often a worker reads the store's live counters again (`starsrec.serving.live_items`);
    # between reads it decays its snapshot, and events it stores itself count at once.
    live_refresh_s: float = 1.0
    # Products a service takes beyond its trained catalogue (PUT /v1/items; `starsrec serve
    # --max-added-products`): each costs memory for good, so a flood of new ids is refused
    # with 409 past it. Changing a product that exists is always allowed.
    max_added_products: int = 100_000
    # Places kept after the first `new_item_slots_after` for the best new items
    # (`starsrec.recommender.new_item_slots`; a request's filters may set their own): new
    # to the catalogue (products without training events: a shop's choice between today's
    # sales and tomorrow's) or, with new_to "shopper", to the shopper (explore places).
    # 0: none.
    new_item_slots: int = 0
    new_item_slots_after: int = 10
    new_to: str = "catalogue"
    # Products one PUT /v1/items may carry (`--max-products-per-request`): a write is
    # embedded in one go, so this bounds the work one request can queue.
    max_products_per_request: int = 1000

    def __post_init__(self) -> None:
        if self.new_item_slots < 0 or self.new_item_slots_after < 0:
            raise ValueError(
                f"new_item_slots ({self.new_item_slots}) and new_item_slots_after "
                f"({self.new_item_slots_after}) must be >= 0: 0 keeps no places"
            )
        if self.new_to not in NEW_TO:
            raise ValueError(f"new_to must be one of {', '.join(NEW_TO)}, got {self.new_to!r}")
