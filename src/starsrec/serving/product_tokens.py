"""Tokens for products put while serving (`RecommendationService.upsert_items`).

A new product's token comes from its text and tags alone, exactly like a cold item's; a
changed trained product keeps the delta and bias it learned. Its calendar-offset class is
the catalogue class the model knows, else the class whose items' mean text is nearest.
"""

from __future__ import annotations

import numpy as np
import torch

from starsrec.features.encoders import TextEncoder
from starsrec.features.text import embed_items
from starsrec.serving.catalogue import item_tags
from starsrec.stars.batch import PAD, slot_of
from starsrec.stars.model import STARS
from starsrec.stars.recommender import StarsRecommender, text_encoder


class ProductTokenizer:
    """Index vectors for products of one trained STARS recommender."""

    def __init__(self, recommender: StarsRecommender) -> None:
        self.recommender = recommender
        self.model = recommender._fitted_model()
        self._encoder: TextEncoder | None = None  # the text encoder, loaded at the first product
        self._centroids: np.ndarray | None = None

    def features(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(P, Dt) text embeddings and (P, G) tags of product texts."""
        if self._encoder is None:
            self._encoder = text_encoder(self.recommender.config)
        text = embed_items(texts, self._encoder, cache_dir=None, progress=False)
        return text, item_tags(self.recommender, texts)

    @torch.no_grad()
    def token(
        self, text: np.ndarray, tags: np.ndarray, row: int | None
    ) -> tuple[np.ndarray, float]:
        """Token and bias of a product: its learned delta and bias when it was trained
        (`row` its catalogue row), text and tags alone otherwise."""
        model = self.model
        delta, bias = None, new_product_bias(model)
        if row is not None:
            slot = slot_of(row)
            bias = float(model.item_biases()[row])
            if model.config.use_text and model.config.use_delta:
                delta = model.item_tokens.delta.weight[slot] * model.item_tokens.warm[slot]
        token = model.item_tokens.combine(torch.from_numpy(text), torch.from_numpy(tags), delta)
        return token.numpy(), bias

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

    @torch.no_grad()
    def index_vector(self, token: np.ndarray, bias: float, model_class: int) -> np.ndarray:
        """The product's index row [e_i, b_i, onehot(class(i))]."""
        return self.model.retrieval_items(
            torch.from_numpy(token[None]), torch.tensor([bias]), torch.tensor([model_class])
        )[0].numpy()


def new_product_bias(model: STARS) -> float:
    """The bias of a product added after training: the model's one bias rule
    (`STARS.item_bias_terms`) for an item without training events, which the padding slot
    is."""
    return float(model.item_bias_terms(torch.tensor([PAD]))[0].detach())
