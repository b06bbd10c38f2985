"""Products added or changed while serving (`PUT /v1/items`), the product half of
`RecommendationService`.

A write is three steps, so that the slow one never holds up requests:

    prepare_products  check the batch (taxonomy, the catalogue cap) and compute every row:
                      embeddings, tags, tokens, index vectors; reads the catalogue only, so
                      the API runs it in a worker thread while requests are served
    apply_products    put the rows into the catalogue and the index: quick, and done in one
                      piece on the serving thread, so a request sees all of a write or none
    log_products      append the batch to the product log and fsync, before the answer

`upsert_items` runs the three in a row (replays, tests, embedded use). The catalogue cap
(`ServingConfig.max_added_products`) bounds how many products a service takes beyond its
trained catalogue; a replay of the log at load is not capped (those products were
acknowledged), a write that would pass the cap is refused with 409 and the remedy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from starsrec.index.item_index import ItemIndex
from starsrec.serving.catalogue import ItemTable, Product, RequestError, code
from starsrec.serving.config import ServingConfig
from starsrec.serving.filters import FilterScopes
from starsrec.serving.product_log import ProductLog
from starsrec.serving.product_tokens import PreparedProducts, ProductTokenizer
from starsrec.stars.recommender import StarsRecommender

logger = logging.getLogger(__name__)

PRODUCT_REPLAY_BATCH = 1000
CATALOGUE_CAP_OPTION = "--max-added-products"  # `starsrec serve`'s flag for the cap


class ProductWrites:
    """Product writes for a service holding these attributes (RecommendationService)."""

    recommender: StarsRecommender
    items: ItemTable
    index: ItemIndex
    tokenizer: ProductTokenizer
    product_log: ProductLog | None
    config: ServingConfig
    version: int
    _scopes: FilterScopes

    def added_products(self) -> int:
        """How many products this service holds beyond its trained catalogue."""
        return len(self.items) - self.recommender._fitted_catalogue().size

    def check_room(self, products: Sequence[Product]) -> None:
        """A RequestError (409) when adding the new ids among `products` would take the
        catalogue past `ServingConfig.max_added_products`."""
        cap = self.config.max_added_products
        new = len({p.item_id for p in products} - self.items.row_of.keys())
        held = self.added_products()
        if new and held + new > cap:
            raise RequestError(
                "items",
                f"items: the catalogue is full: it holds {held} products put while serving, "
                f"and {new} new ones would pass the cap of {cap} (ServingConfig."
                f"max_added_products; start `starsrec serve` with {CATALOGUE_CAP_OPTION} N "
                "to raise it); changing existing products is still allowed",
                status=409,
            )

    def prepare_products(
        self, products: Sequence[Product], capped: bool = True
    ) -> PreparedProducts:
        """Check `products` and compute their rows; changes nothing a request reads."""
        self.items.check_taxonomy(products)
        if capped:
            self.check_room(products)
        return self.tokenizer.prepare(self.items, products)

    def apply_products(self, prepared: PreparedProducts, capped: bool = True) -> list[str]:
        """Put prepared products into the catalogue and the index, searchable by the next
        request; returns "added" or "updated" for each."""
        if capped:  # the catalogue may have grown since the batch was prepared
            self.check_room(prepared.products)
        items, outcome, rows = self.items, [], []
        for p, product in enumerate(prepared.products):
            outcome.append("updated" if product.item_id in items.row_of else "added")
            row = items.put(
                product.item_id,
                product.text,
                item_class=code(items.class_names, product.item_class),
                subclass=code(items.subclass_names, product.subclass),
                model_class=prepared.model_classes[p],
                tags=prepared.tags[p],
                tokens=prepared.tokens[p],
                in_stock=product.in_stock,
            )
            rows.append(row)
        # One index call each for changed and new rows (a batch may name a product twice:
        # its last version wins); new rows are the next ones of the index, in order.
        latest = dict(zip(rows, prepared.vectors, strict=True))
        order = np.array(sorted(latest), dtype=np.int64)
        if len(order):
            vectors = np.stack([latest[int(row)] for row in order])
            known = order < self.index.size
            if known.any():
                self.index.update(order[known], vectors[known])
            if not known.all():
                added = self.index.add(vectors[~known])
                assert np.array_equal(added, order[~known]), "index and item rows must align"
        self.version += 1
        self._scopes.clear()
        # The first ids only, each as repr: a newline in an id cannot forge a log line.
        products = prepared.products
        shown = ", ".join(
            f"{p.item_id[:100]!r} {o}" for p, o in zip(products[:5], outcome[:5], strict=True)
        )
        more = f" and {len(products) - 5} more" if len(products) > 5 else ""
        logger.info("catalogue: %s%s", shown, more)
        return outcome

    def log_products(self, products: Sequence[Product]) -> None:
        """Make applied products durable (appended to the product log, fsynced)."""
        if self.product_log is not None:
            self.product_log.append(products)

    def upsert_items(self, products: Sequence[Product], capped: bool = True) -> list[str]:
        """Add new products or change existing ones (prepare, apply, log); searchable by
        the next request. A new product's token comes from its text and tags alone (a
        cold item); a changed trained one keeps the delta and bias it learned. Returns
        "added"/"updated" each."""
        outcome = self.apply_products(self.prepare_products(products, capped), capped)
        self.log_products(products)
        return outcome

    def followed_products(self) -> list[Product]:
        """What other processes logged since this service last read the product log (the
        workers of one server share it): to prepare and apply like a PUT's, not to log."""
        log = self.product_log
        return log.read_new() if log is not None and log.has_new() else []

    def replay_products(self) -> list[Product]:
        """Apply the products the log gained since this service last read it (all of them
        at load; after a hot reload's load, those the previous service took meanwhile).
        Their texts embedded before come from the embedding cache."""
        log, self.product_log = self.product_log, None  # they are in the log already
        try:
            assert log is not None  # load opens the log before anything replays it
            products = log.read_new()
            for first in range(0, len(products), PRODUCT_REPLAY_BATCH):
                self.upsert_items(products[first : first + PRODUCT_REPLAY_BATCH], capped=False)
        finally:
            self.product_log = log
        if products:
            logger.info("replayed %d products put while serving", len(products))
        if self.added_products() > self.config.max_added_products:
            logger.warning(
                "the catalogue holds %d products put while serving, over the cap of %d: "
                "new products are refused until %s is raised",
                self.added_products(),
                self.config.max_added_products,
                CATALOGUE_CAP_OPTION,
            )
        return products
