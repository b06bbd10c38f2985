"""The one contract STARS and every baseline honour (DESIGN section 5).

A recommender is fitted on `TrainingData`, scores every catalogue item for a batch of
`Queries` (`score`, what the full-ranking evaluator uses), returns the top k item ids under
`Filters` (`recommend`), and saves to / loads from a directory of config JSON, safetensors
and an item table: never pickles.

`recommend` breaks ties by catalogue index (lower index first), so every run returns the
same list; the evaluator instead scores a tied block by its expected rank
(`starsrec.evaluation.baskets`), so no model gains from where its ties happen to fall.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from starsrec.data.baskets import BasketTargets
from starsrec.data.files import CONFIG_FILE, ITEMS_FILE, META_FILE, STATE_FILE
from starsrec.data.integrity import (
    CHECKSUMS_KEY,
    ArtifactError,
    checksums,
    read_manifest,
    retrain_remedy,
    verify,
    write_atomic,
    write_json_atomic,
)
from starsrec.data.interactions import Catalogue, EventLog, Queries
from starsrec.data.topk import top_k  # re-exported: the contract's top-k, used by every layer

ARTIFACT_FORMAT = 1


@dataclass(frozen=True)
class TrainingData:
    """What `fit` gets: training events, the catalogue, and optional validation queries.

    exclude_seen: whether items already in a user's history are left out of their
    recommendations (`Dataset.exclude_seen`), which models choose under and adapt to.
    validation_targets: each validation query's distinct target items (one per query under
    the single-target protocols, a whole basket under the basket ones); what models choose
    on (early stopping, tree counts, calibration), always with the test protocol's shape.
    """

    train: EventLog
    catalogue: Catalogue
    country: str | None = None
    exclude_seen: bool = False
    validation: Queries | None = None
    validation_targets: BasketTargets | None = None

    def __post_init__(self) -> None:
        if (self.validation is None) != (self.validation_targets is None):
            raise ValueError("validation and validation_targets come together (or neither)")
        given = len(self.validation_targets.offsets) - 1 if self.validation_targets else 0
        if self.validation is not None and given != len(self.validation):
            raise ValueError(f"{len(self.validation)} validation queries but {given} target sets")


@dataclass(frozen=True)
class Slots:
    """A ranking rule beside the filters: places kept for a set of items (for example new
    products, which a model trained on past sales ranks low until they sell).

    The `count` best-scored allowed items of `items` that are not already in the first
    `after` places are placed right after them, in their own order, ahead of every other
    item: so the first `after + count` places hold at least `count` of the set (where it
    has that many allowed items). The first `after` places never change.
    items: (N,) bool over the catalogue (over the candidates' rows in `place_slots`).
    new_to_shopper: leave each query's history items out of the set, so the places go to
    items new to the shopper (explore places; with `items` all True, any such item).
    """

    items: np.ndarray
    count: int = 2
    after: int = 10
    new_to_shopper: bool = False

    def __post_init__(self) -> None:
        if self.count < 0 or self.after < 0:
            raise ValueError(
                f"slots: count and after must be >= 0, got count={self.count}, after={self.after}"
            )


NEW_TO = ("catalogue", "shopper")  # what new-item places are for: `new_item_slots`


def new_item_slots(count: int, after: int, new_to: str, new_products: np.ndarray) -> Slots | None:
    """The places kept for new items, the one rule of the evaluator and the service: `count`
    places after the first `after` for the best items new to the catalogue (`new_products`,
    (N,) bool: without training events) or new to the shopper (not in the query's history:
    explore places); None for count 0."""
    if new_to not in NEW_TO:
        raise ValueError(f"new items are new to one of {', '.join(NEW_TO)}, got {new_to!r}")
    if not count:
        return None
    if new_to == "shopper":
        return Slots(np.ones(len(new_products), bool), count, after, new_to_shopper=True)
    return Slots(new_products, count, after)


@dataclass(frozen=True)
class Filters:
    """Which items a request may return: the one vocabulary of filters, for every model,
    the evaluation and the service (which turns a request's names into these at its edge,
    `starsrec.serving.filters`).

    allowed: (N,) bool over the catalogue (in stock, a class scope...), None = all.
    exclude: per query, item ids never to return.
    exclude_seen: drop items already in the query's history.
    scope: a key naming `allowed` (equal keys, equal bitmaps) under which a search may
    cache what it derives from the bitmap; None = nothing cached.
    slots: places kept for a set of items (`Slots`), applied after the filters; None = none.
    """

    allowed: np.ndarray | None = None
    exclude: Sequence[Sequence[str]] | None = None
    exclude_seen: bool = False
    scope: Hashable | None = None
    slots: Slots | None = None


class Recommender(ABC):
    """Base class: subclasses implement `_fit`, `score`, `_state` and `_restore`."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any) -> None:
        self.config = config
        self.catalogue: Catalogue | None = None

    # -- training and scoring -------------------------------------------------------
    def fit(self, data: TrainingData) -> Self:
        """Learn from `data.train`; returns self."""
        self.catalogue = data.catalogue
        self._fit(data)
        return self

    @abstractmethod
    def _fit(self, data: TrainingData) -> None: ...

    @abstractmethod
    def score(self, queries: Queries) -> np.ndarray:
        """(Q, N) float32 scores over the whole catalogue; higher is better."""

    def recommend(
        self, queries: Queries, k: int = 10, filters: Filters | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and scores per query: ((Q, k') str, (Q, k') float32).

        k' = min(k, catalogue size). Where filters leave fewer than k' items for a
        query, its row is padded with id "" and score -inf.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        catalogue = self._fitted_catalogue()
        scores = self.score(queries).astype(np.float32, copy=True)
        apply_filters(scores, queries, catalogue, filters or Filters())
        index, top_scores = top_k(scores, min(k, catalogue.size))
        ids = np.where(index >= 0, catalogue.item_ids[index], "")
        return ids, top_scores

    def diagnostics(self, queries: Queries, targets: BasketTargets) -> dict[str, float]:
        """Numbers about how the model reached its ranking of `queries` (e.g. how many
        targets a re-ranker's candidates hold), for reports beside the metrics; none here."""
        return {}

    def _fitted_catalogue(self) -> Catalogue:
        if self.catalogue is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load()")
        return self.catalogue

    # -- persistence ----------------------------------------------------------------
    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]:
        """Arrays that, with the config, fully determine the fitted model."""

    @abstractmethod
    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:
        """Inverse of `_state` (`path` for models that keep extra files there)."""

    def _save_extra(self, out: Path) -> list[str]:
        """Write model-specific files into `out` (atomically); return their names."""
        return []

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Write config JSON, safetensors state and the item table into directory `path`,
        each atomically, then meta.json: `meta` plus the format and every file's checksum."""
        catalogue = self._fitted_catalogue()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / CONFIG_FILE, {"model": self.name, "config": asdict(self.config)})
        state = {k: np.ascontiguousarray(v) for k, v in self._state().items()}
        write_atomic(out / STATE_FILE, lambda temporary: save_file(state, temporary))
        write_atomic(out / ITEMS_FILE, lambda temporary: save_catalogue(catalogue, temporary))
        names = [CONFIG_FILE, STATE_FILE, ITEMS_FILE, *self._save_extra(out)]
        record = {**(meta or {}), "format": ARTIFACT_FORMAT, "model": self.name}
        write_json_atomic(out / META_FILE, {**record, CHECKSUMS_KEY: checksums(out, names)})
        return out

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Rebuild a model written by `save`, after checking its files against meta.json.

        A missing, corrupt, truncated or incompatible artifact raises ArtifactError."""
        root = Path(path)
        remedy = f"save it again, or {retrain_remedy(root)}"
        if not root.is_dir():
            raise ArtifactError(f"{root} is not a directory: give a saved model's directory")
        if (root / META_FILE).exists():
            manifest = read_manifest(root / META_FILE, remedy)
            if manifest.get("format", ARTIFACT_FORMAT) != ARTIFACT_FORMAT:
                raise ArtifactError(
                    f"{root} has artifact format {manifest['format']}, this starsrec reads "
                    f"{ARTIFACT_FORMAT}: use the starsrec version that wrote it, or {remedy}"
                )
            verify(root, manifest, META_FILE, remedy)
        config = read_manifest(root / CONFIG_FILE, remedy)
        if config.get("model") != cls.name:
            raise ArtifactError(f"{root} holds a {config.get('model')!r} model, not {cls.name!r}")
        try:
            model = cls(cls.config_class(**config["config"]))
            model.catalogue = load_catalogue(root / ITEMS_FILE)
            model._restore(load_file(root / STATE_FILE), root)
        except Exception as error:  # every way a damaged file can fail to parse
            raise ArtifactError(f"{root} could not be loaded ({error}): {remedy}") from error
        return model


def rebuild_nested_configs(config: Any) -> None:
    """Nested config dataclasses arrive as dicts from config.json: rebuild each, in place,
    with its field's default factory (call from a frozen config's __post_init__)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
            object.__setattr__(config, f.name, f.default_factory(**value))


def save_catalogue(catalogue: Catalogue, path: Path) -> None:
    """The item table a saved model scores over (ids, text, class, subclass)."""
    names = np.array([*catalogue.class_names, ""], dtype=object)
    subnames = np.array([*catalogue.subclass_names, ""], dtype=object)
    table = pd.DataFrame(
        {
            "item_id": catalogue.item_ids,
            "text": catalogue.texts,
            "class": names[catalogue.item_class],
            "subclass": subnames[catalogue.subclass],
        }
    )
    for column, names_ in (
        ("class", catalogue.class_names),
        ("subclass", catalogue.subclass_names),
    ):
        if not names_:
            table = table.drop(columns=column)
    table.to_parquet(path, index=False)


def load_catalogue(path: Path) -> Catalogue:
    """The `Catalogue` of an item table written by `save_catalogue`."""
    table = pd.read_parquet(path)
    for column in ("class", "subclass"):
        if column in table.columns:
            table[column] = table[column].replace("", None)
    return Catalogue.from_items(table)


def check_filters(filters: Filters, n_queries: int, n_items: int) -> None:
    """A ValueError when `filters` do not fit a batch of `n_queries` over `n_items` items."""
    if filters.allowed is not None and np.shape(filters.allowed) != (n_items,):
        raise ValueError(
            f"filters.allowed must have one flag per catalogue item ({n_items}), "
            f"got shape {np.shape(filters.allowed)}"
        )
    if filters.exclude is not None and len(filters.exclude) != n_queries:
        raise ValueError(
            f"filters.exclude needs one list per query ({n_queries}), got {len(filters.exclude)}"
        )
    if filters.slots is not None and np.shape(filters.slots.items) != (n_items,):
        raise ValueError(
            f"filters.slots.items must have one flag per catalogue item ({n_items}), "
            f"got shape {np.shape(filters.slots.items)}"
        )


def apply_filters(
    scores: np.ndarray, queries: Queries, catalogue: Catalogue, filters: Filters
) -> None:
    """Set the scores of items a request may not return to -inf, then place the filters'
    slots (`place_slots`), in place."""
    check_filters(filters, len(queries), catalogue.size)
    if filters.allowed is not None:
        scores[:, ~np.asarray(filters.allowed, dtype=bool)] = -np.inf
    if filters.exclude is not None:
        for q, ids in enumerate(filters.exclude):
            index = catalogue.index_of(list(ids)) if len(ids) else np.empty(0, np.int64)
            scores[q, index[index >= 0]] = -np.inf
    if filters.exclude_seen:
        query, rows = queries.flat_history()
        scores[query, queries.log.item[rows]] = -np.inf
    scores[np.isnan(scores)] = -np.inf
    if filters.slots is None:
        return
    members = None
    if filters.slots.new_to_shopper:
        query, rows = queries.flat_history()
        members = np.repeat(filters.slots.items[None], len(scores), axis=0)
        members[query, queries.log.item[rows]] = False
    place_slots(scores, filters.slots, members)


def place_slots(scores: np.ndarray, slots: Slots, members: np.ndarray | None = None) -> None:
    """Apply `slots` to (Q, M) filtered float32 `scores` in place, by scores alone, so that
    `top_k` and the evaluator (which scores ties by their expected rank) both see the
    placed order: each placed item's score is set between the `after`-th best score and the
    best score left below it, in the placed items' own order. Columns are ranked as `top_k`
    ranks them (ties by lower column), so a caller ranking candidate rows orders the
    columns by row. Where those two scores are equal, the placed items come after the items
    tied with the after-th (and where they are fewer float32 steps apart than places to
    fill, placed items tie with each other). `members`: (Q, M) bool, each query's own set
    in place of `slots.items` (None: `slots.items` for every query).
    """
    if slots.count == 0:
        return
    head = top_k(scores, slots.after)[0] if slots.after else np.empty((len(scores), 0), int)
    for q, row in enumerate(scores):
        first = head[q][head[q] >= 0]
        if len(first) < slots.after:  # every allowed item already lies in the first places
            continue
        rest = np.isfinite(row)
        rest[first] = False
        wanted = slots.items if members is None else members[q]
        chosen = top_k(np.where(rest & wanted, row, -np.inf)[None], slots.count)[0][0]
        chosen = chosen[chosen >= 0]
        if not len(chosen):
            continue
        rest[chosen] = False
        top = row[first[-1]] if len(first) else np.float32(np.inf)
        low = np.float64(row[rest].max()) if rest.any() else np.float64(row[chosen].min()) - 1
        if not np.isfinite(top):  # no first places: only the others have to be passed
            top = np.float32(max(row[chosen].max(), low) + 1)
        steps = np.arange(len(chosen), 0, -1) / (len(chosen) + 1)
        placed = (low + (np.float64(top) - low) * steps).astype(np.float32)
        # Never level with the after-th item (a tie could put a placed item before it).
        below_top = np.nextafter(top, np.float32(-np.inf))
        row[chosen] = np.minimum(np.maximum(placed, np.float32(low)), below_top)


def ranks_of(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target item, ties by lower index first (as `top_k`)."""
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, None]
    better = (scores > target_scores).sum(axis=1)
    tied_before = ((scores == target_scores) & (np.arange(scores.shape[1]) < targets[:, None])).sum(
        axis=1
    )
    return (better + tied_before).astype(np.int64)
