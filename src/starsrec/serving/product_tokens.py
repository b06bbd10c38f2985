"""Tokens for products put while serving (`RecommendationService.upsert_items`).

A new product's token comes from its text and tags alone, exactly like a cold item's; a
changed trained product keeps the delta and bias it learned. Its calendar-offset class is
the catalogue class the model knows, else the class whose items' mean text is nearest.

`ProductTokenizer.prepare` does the part of a write that takes long (embedding and tagging
the texts, computing index rows) and changes nothing a request reads, so the API runs it in
a worker thread while requests go on; the service then applies the prepared rows at once.
Text embeddings go through `starsrec.features.text`'s cache, kept in the artifact
(`serving/embeddings/`), so replaying the product log at a restart or reload embeds no text
that was embedded before.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from starsrec.features.encoders import TextEncoder, named_encoder
from starsrec.features.tags import tagging_text
from starsrec.features.text import EmbeddingCache, embed_items
from starsrec.serving.catalogue import ItemTable, Product
from starsrec.stars.batch import PAD, slot_of
from starsrec.stars.model import STARS
from starsrec.stars.recommender import StarsRecommender, item_tags

# One open cache per file and encoder in this process, each with its lock: a reload's new
# service and the old one share it, so neither rewrites the file without the other's texts.
_CACHES: dict[tuple[Path, str], tuple[EmbeddingCache, threading.Lock]] = {}
_CACHES_LOCK = threading.Lock()


def _shared_cache(cache_dir: Path, encoder_name: str) -> tuple[EmbeddingCache, threading.Lock]:
    key = (cache_dir.absolute(), encoder_name)
    with _CACHES_LOCK:
        if key not in _CACHES:
            _CACHES[key] = (EmbeddingCache(cache_dir, encoder_name), threading.Lock())
        return _CACHES[key]


@dataclass(frozen=True)
class PreparedProducts:
    """Products with the rows the catalogue and the index need (one per product)."""

    products: list[Product]
    tokens: np.ndarray  # (P, D) item tokens
    tags: np.ndarray  # (P, G)
    model_classes: np.ndarray  # (P,) calendar-offset classes
    vectors: np.ndarray  # (P, index dim) index rows [e_i, b_i, onehot(class(i))]


class ProductTokenizer:
    """Index vectors for products of one trained STARS recommender; text embeddings cached
    in `cache_dir` when given."""

    def __init__(self, recommender: StarsRecommender, cache_dir: Path | None = None) -> None:
        self.recommender = recommender
        self.model = recommender._fitted_model()
        self.cache_dir = cache_dir
        self._encoder: TextEncoder | None = None  # loaded by load_encoder, once
        self._loading = threading.Lock()
        self._centroids: np.ndarray | None = None

    def load_encoder(self) -> TextEncoder:
        """The text encoder, loaded at the first call (its weights too: a sentence
        transformer otherwise loads them at its first text, seconds into a request)."""
        with self._loading:
            if self._encoder is None:
                config = self.recommender.config
                encoder = named_encoder(config.text_encoder, config.seed)
                _ = encoder.dim  # a sentence transformer loads its model to answer this
                self._encoder = encoder
            return self._encoder

    def features(self, products: Sequence[Product]) -> tuple[np.ndarray, np.ndarray]:
        """(P, Dt) text embeddings of the products' texts (those in the cache are not
        embedded again) and (P, G) tags of their texts and the places they name."""
        texts = [p.text for p in products]
        encoder = self.load_encoder()
        if self.cache_dir is None:
            text = embed_items(texts, encoder, progress=False)
        else:
            cache, lock = _shared_cache(self.cache_dir, encoder.name)
            with lock:
                text = embed_items(texts, encoder, progress=False, cache=cache)
        read = [tagging_text(p.text, (p.subclass, p.item_class)) for p in products]
        return text, item_tags(self.recommender.config, read)

    @torch.no_grad()
    def prepare(self, items: ItemTable, products: Sequence[Product]) -> PreparedProducts:
        """Every row of `products` for the catalogue `items`, which is only read (the
        trained rows and known class names), so requests may be served meanwhile. A
        product's token comes from its text and tags; a trained product keeps the delta
        and bias it learned. One batched pass for the whole batch."""
        model = self.model
        text, tags = self.features(products)
        rows = [items.row_of.get(p.item_id) for p in products]
        trained_size = self.recommender._fitted_catalogue().size
        trained = np.array([r is not None and r < trained_size for r in rows], dtype=bool)
        bias = np.full(len(products), new_product_bias(model), dtype=np.float32)
        delta = None
        if trained.any():
            known_rows = torch.tensor([r for r, t in zip(rows, trained, strict=True) if t])
            bias[trained] = model.item_biases()[known_rows].numpy()
            if model.config.use_text and model.config.use_delta:
                slots = slot_of(known_rows)
                learned = model.item_tokens.delta.weight[slots]
                delta = torch.zeros(len(products), learned.shape[1])
                delta[torch.from_numpy(trained)] = learned * model.item_tokens.warm[slots, None]
        tokens = model.item_tokens.combine(torch.from_numpy(text), torch.from_numpy(tags), delta)
        classes = np.array(
            [
                self.model_class(known_class(items, p.item_class), text[n])
                for n, p in enumerate(products)
            ],
            dtype=np.int64,
        )
        vectors = model.retrieval_items(tokens, torch.from_numpy(bias), torch.from_numpy(classes))
        return PreparedProducts(list(products), tokens.numpy(), tags, classes, vectors.numpy())

    def model_class(self, item_class: int, text: np.ndarray) -> int:
        """The calendar-offset class: the catalogue class the model knows, else the class
        whose items' mean text embedding is nearest."""
        if (
            0 <= item_class < self.model.n_classes
            and self.recommender._fitted_catalogue().class_names
        ):
            return item_class
        if self._centroids is None:
            features = self.recommender.features
            sums = np.zeros((self.model.n_classes, features["text"].shape[1]))
            np.add.at(sums, features["item_class"], features["text"])
            self._centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-9)
        return int(np.argmax(self._centroids @ text))


def known_class(items: ItemTable, name: str | None) -> int:
    """The catalogue's code of a class name; -1 for None or a name it lacks (which gets its
    code when the product is applied; a class the model was not trained on takes the
    nearest class by text either way)."""
    if name is None or name not in items.class_names:
        return -1
    return items.class_names.index(name)


def new_product_bias(model: STARS) -> float:
    """The bias of a product added after training: the model's one bias rule
    (`STARS.item_bias_terms`) for an item without training events, which the padding slot
    is."""
    return float(model.item_bias_terms(torch.tensor([PAD]))[0].detach())
