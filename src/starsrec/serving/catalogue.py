"""The serving catalogue: one row per index row, with what filters, the encoder and the
explanations read (class codes, tags, item tokens, stock), grown by products added online.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from starsrec.stars.recommender import StarsRecommender


class RequestError(ValueError):
    """A request the service cannot answer; `field` names the offending input."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True)
class Product:
    """A product to add or change (`PUT /v1/items`)."""

    item_id: str
    text: str
    item_class: str | None = None
    subclass: str | None = None
    in_stock: bool = True


class ItemTable:
    """The serving catalogue, one row per index row; grows in place (amortised doubling)
    as products are added, so an added product costs O(1), not a copy of the catalogue."""

    COLUMNS = ("item_class", "subclass", "model_class", "tags", "tokens", "in_stock")

    def __init__(
        self,
        item_ids: list[str],
        texts: list[str],
        class_names: list[str],
        subclass_names: list[str],
        **columns: np.ndarray,  # COLUMNS, one row per item
    ) -> None:
        self.item_ids = item_ids
        self.texts = texts
        self.class_names = class_names
        self.subclass_names = subclass_names
        self.row_of = {item: row for row, item in enumerate(item_ids)}
        self._columns = {name: columns[name] for name in self.COLUMNS}

    def __len__(self) -> int:
        return len(self.item_ids)

    def __getattr__(self, name: str) -> np.ndarray:
        if name in self.COLUMNS:
            return self._columns[name][: len(self.item_ids)]
        raise AttributeError(name)

    def put(self, item_id: str, text: str, **values) -> int:
        """Set the row of `item_id` (appending a new one if needed); returns the row."""
        row = self.row_of.get(item_id)
        if row is None:
            row = len(self.item_ids)
            for name, column in self._columns.items():
                if row == len(column):
                    grown = np.zeros((max(2 * row, 16), *column.shape[1:]), column.dtype)
                    grown[:row] = column
                    self._columns[name] = grown
            self.item_ids.append(item_id)
            self.texts.append(text)
            self.row_of[item_id] = row
        self.texts[row] = text
        for name, value in values.items():
            self._columns[name][row] = value
        return row

    def rows(self, item_ids: Sequence[str], field_name: str) -> np.ndarray:
        """Rows of known item ids; a RequestError naming `field_name` otherwise."""
        missing = [i for i in item_ids if i not in self.row_of]
        if missing:
            raise RequestError(
                field_name,
                f"{field_name}: unknown item ids {missing[:5]}; add them with PUT /v1/items",
            )
        return np.array([self.row_of[i] for i in item_ids], dtype=np.int64)

    def check_taxonomy(self, products: Sequence[Product]) -> None:
        """A RequestError when a product names a class or subclass this catalogue lacks."""
        for position, product in enumerate(products):
            for name, value, known in (
                ("class", product.item_class, self.class_names),
                ("subclass", product.subclass, self.subclass_names),
            ):
                if value is not None and not known:
                    raise RequestError(
                        f"items[{position}].{name}",
                        f"items[{position}].{name}: this catalogue has no {name} taxonomy; "
                        "omit the field",
                    )


@torch.no_grad()
def item_table(recommender: StarsRecommender) -> ItemTable:
    """The trained catalogue as serving rows (every item in stock)."""
    catalogue, model = recommender._fitted_catalogue(), recommender._fitted_model()
    features = recommender.features
    return ItemTable(
        list(catalogue.item_ids),
        list(catalogue.texts),
        list(catalogue.class_names),
        list(catalogue.subclass_names),
        item_class=catalogue.item_class.astype(np.int64),
        subclass=catalogue.subclass.astype(np.int64),
        model_class=features["item_class"].astype(np.int64),
        tags=features["tags"].astype(np.float32),
        tokens=model.item_vectors().numpy(),
        in_stock=np.ones(catalogue.size, dtype=bool),
    )


@torch.no_grad()
def retrieval_vectors(recommender: StarsRecommender) -> np.ndarray:
    """(N, D + 1 + n_classes) the index rows of the trained catalogue."""
    model = recommender._fitted_model()
    item_class = torch.from_numpy(recommender.features["item_class"].astype(np.int64))
    vectors = model.retrieval_items(
        model.item_vectors(), model.item_biases(), item_class.to(model.device)
    )
    return vectors.cpu().numpy()


def code(names: list[str], name: str | None) -> int:
    """The code of a class name, a new name getting the next code; -1 for None."""
    if name is None:
        return -1
    if name not in names:
        names.append(name)
    return names.index(name)
