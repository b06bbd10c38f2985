"""The durable log of products added or changed while serving (`PUT /v1/items`).

A product put into a running service is recommendable at once, but lives in the process's
memory; this log makes it outlive restarts, reloads and a re-run of `starsrec index`. Each
acknowledged upsert is appended as one JSON line and fsynced before the service answers.
`RecommendationService.load` replays the log in order (the last version of each product
wins) and rewrites it compacted, atomically, so it grows with the catalogue, not with the
number of updates. A hot reload does not compact (the previous service may still append);
after its swap the new service reads only the lines the previous one added meanwhile. The
workers of one server share the log: each follows it (`has_new`, `read_new`), so a product
put through one is served by all.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from starsrec.data.integrity import ArtifactError, write_atomic
from starsrec.serving.catalogue import Product

logger = logging.getLogger(__name__)


class ProductLog:
    """Append-only JSON lines of `Product`s at `path` (created at the first append).

    Several processes may share one log (the workers of `starsrec serve --workers N`): an
    append holds an exclusive lock on the file and a read a shared one, so a reader never
    sees half a line, and each object reads on from the byte where it stopped, skipping the
    lines it appended itself (its process applied them already)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset, self._line = 0, 0  # bytes and lines read so far
        self._own: list[tuple[int, int]] = []  # the byte ranges this object appended

    def append(self, products: Sequence[Product]) -> None:
        """Write `products` and fsync: after this returns they survive a crash."""
        with open(self.path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            start = handle.seek(0, os.SEEK_END)
            if start and os.pread(handle.fileno(), 1, start - 1) != b"\n":
                start += handle.write(b"\n")  # end a line a crash cut short: it stays apart
            end = start + handle.write(_lines(products).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        self._own.append((start, end))

    def has_new(self) -> bool:
        """Whether the file grew since this object last read it (one stat)."""
        try:
            return self.path.stat().st_size > self._offset
        except FileNotFoundError:
            return False

    def read_new(self) -> list[Product]:
        """The latest version of every product logged since the last `read_new` or
        `compact` of this object (every product, the first time), in first-logged order,
        less what this object appended. A line that is not JSON, a write cut short by a crash
        (never acknowledged), is skipped with a warning; JSON that is not a product raises
        ArtifactError (after every line is marked read)."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            handle.seek(self._offset)
            data = handle.read()
        latest: dict[str, Product] = {}
        position, bad = self._offset, None
        for number, raw in enumerate(data.splitlines(keepends=True), start=self._line + 1):
            start, position, self._line = position, position + len(raw), number
            if any(low <= start < high for low, high in self._own):
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                # A write a crash cut short (never acknowledged): the last line, or one the
                # next append ended with a newline.
                logger.warning("%s:%d: skipping a cut-short line (%s)", self.path, number, error)
                continue
            try:
                product = Product(**record)
            except TypeError as error:
                if bad is None:
                    bad = ArtifactError(
                        f"{self.path}:{number} is not a product record ({error}): fix or "
                        "remove that line (products after it are otherwise lost on this load)"
                    )
                continue
            latest[product.item_id] = product
        self._offset = position
        self._own = [(low, high) for low, high in self._own if high > position]
        if bad is not None:
            raise bad
        return list(latest.values())

    def compact(self, products: Sequence[Product]) -> None:
        """Replace the log by `products` (one line each), atomically."""
        lines = _lines(products)
        write_atomic(self.path, lambda temporary: temporary.write_text(lines, encoding="utf-8"))
        self._offset, self._line, self._own = self.path.stat().st_size, len(products), []


def _lines(products: Sequence[Product]) -> str:
    return "".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in products)
