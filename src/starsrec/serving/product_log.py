"""The durable log of products added or changed while serving (`PUT /v1/items`).

A product put into a running service is recommendable at once, but lives in the process's
memory; this log makes it outlive restarts, reloads and a re-run of `starsrec index`. Each
acknowledged upsert is appended as one JSON line and fsynced before the service answers.
`RecommendationService.load` replays the log in order (the last version of each product
wins) and rewrites it compacted, atomically, so it grows with the catalogue, not with the
number of updates. A hot reload does not compact (the previous service may still append);
after its swap the new service reads only the lines the previous one added meanwhile.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from starsrec.data.integrity import ArtifactError, write_atomic
from starsrec.serving.catalogue import Product

logger = logging.getLogger(__name__)


class ProductLog:
    """Append-only JSON lines of `Product`s at `path` (created at the first append)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lines_read = 0

    def append(self, products: Sequence[Product]) -> None:
        """Write `products` and fsync: after this returns they survive a crash."""
        lines = _lines(products)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def read_new(self) -> list[Product]:
        """The latest version of every product logged since the last `read_new` or
        `compact` of this object (every product, the first time), in first-logged order.
        A last line cut short by a crash (never acknowledged) is skipped with a warning."""
        if not self.path.exists():
            return []
        latest: dict[str, Product] = {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        start, self._lines_read = self._lines_read, len(lines)
        for number, line in enumerate(lines[start:], start=start + 1):
            try:
                product = Product(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as error:
                if number == len(lines):  # the write a crash interrupted
                    logger.warning("%s: skipping a cut-short last line (%s)", self.path, error)
                    continue
                raise ArtifactError(
                    f"{self.path}:{number} is not a product record ({error}): fix or remove "
                    "that line (products after it are otherwise lost on this load)"
                ) from error
            latest[product.item_id] = product
        return list(latest.values())

    def compact(self, products: Sequence[Product]) -> None:
        """Replace the log by `products` (one line each), atomically."""
        lines = _lines(products)
        write_atomic(self.path, lambda temporary: temporary.write_text(lines, encoding="utf-8"))
        self._lines_read = len(products)


def _lines(products: Sequence[Product]) -> str:
    return "".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in products)
