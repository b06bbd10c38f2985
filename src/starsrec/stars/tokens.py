"""Step 1 of STARS (`starsrec.stars.model`): the semantic item tokens
v_i = P([e_text(i) + delta_i ; W_attr t_i]) (or P([e_text(i) ; W_attr t_i]) + delta_i with
`delta_space="width"`), plus an id embedding for the ID-only ablation."""

from __future__ import annotations

import torch
from torch import nn

from starsrec.stars.config import ModelConfig


class ItemTokens(nn.Module):
    """1. Semantic item tokens, for all items or a subset of slots."""

    # Buffers (register_buffer), declared for the type checker.
    text: torch.Tensor
    tags: torch.Tensor
    warm: torch.Tensor

    def __init__(
        self,
        config: ModelConfig,
        text: torch.Tensor,  # (N, Dt) frozen text embeddings
        tags: torch.Tensor,  # (N, G) multi-hot attribute tags
        warm: torch.Tensor,  # (N,) bool: items seen in training
    ) -> None:
        super().__init__()
        self.config = config
        n_items = text.shape[0]
        pad = lambda m: torch.cat([torch.zeros(1, m.shape[1]), m.float()])  # noqa: E731
        self.register_buffer("text", pad(text), persistent=False)  # (N+1, Dt)
        self.register_buffer("tags", pad(tags), persistent=False)  # (N+1, G)
        # Only items seen in training own a delta (and a bias): a cold item drawn as a
        # sampled negative must not learn one, so it stays a pure text-and-tags token.
        self.register_buffer("warm", pad(warm[:, None]).squeeze(1), persistent=False)
        width = 0
        if config.use_text:
            width += text.shape[1]
            if config.use_delta:
                rows = text.shape[1] if config.delta_space == "text" else config.dim
                self.delta = nn.Embedding(n_items + 1, rows)
                nn.init.zeros_(self.delta.weight)  # cold items keep delta = 0
        if config.use_tags:
            self.attributes = nn.Linear(tags.shape[1], config.attribute_dim, bias=False)
            width += config.attribute_dim
        if config.use_item_id:
            self.item_id = nn.Embedding(n_items + 1, config.dim)
            nn.init.normal_(self.item_id.weight, std=0.02)
            width += config.dim
        self.project = nn.Linear(width, config.dim)  # P

    def owned(self, slots: torch.Tensor) -> torch.Tensor:
        """(...) float: 1 where the item's delta and bias apply (warm, and not dropped)."""
        owned = self.warm[slots]
        if self.training and self.config.cold_dropout > 0:
            draw = torch.rand(slots.shape, device=slots.device)
            owned = owned * (draw >= self.config.cold_dropout)
        return owned

    def forward(self, slots: torch.Tensor, owned: torch.Tensor | None = None) -> torch.Tensor:
        """(...) item slots -> (..., D) tokens; `owned` as from `owned(slots)`."""
        return self.with_cold(slots, owned, cold=False)[0]

    def with_cold(
        self, slots: torch.Tensor, owned: torch.Tensor | None = None, cold: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., D) tokens of `slots` as `forward` gives them, and (..., D) the tokens the
        same items have as cold items (no delta), from one projection where they share it
        (`cold=False`: the first twice, where a text-space delta would cost a second one)."""
        delta = self._delta(slots, owned)
        if delta is not None and self.config.delta_space == "text":
            text, tags = self.text[slots], self.tags[slots]
            ids = self.item_id(slots) if self.config.use_item_id else None
            tokens = self.combine(text, tags, delta, ids)
            return tokens, (
                self.combine(text, tags, torch.zeros_like(delta), ids) if cold else tokens
            )
        plain = self._plain(slots)
        return (plain if delta is None else plain + delta), plain

    def _delta(self, slots: torch.Tensor, owned: torch.Tensor | None) -> torch.Tensor | None:
        if not (self.config.use_text and self.config.use_delta):
            return None
        owned = self.owned(slots) if owned is None else owned
        return self.delta(slots) * owned.unsqueeze(-1)

    def _plain(self, slots: torch.Tensor) -> torch.Tensor:
        """Tokens without delta, projected once per distinct item: a training batch's events
        repeat their items, and the projection of their text was most of the tower's cost."""
        unique, inverse = torch.unique(slots, return_inverse=True)
        ids = self.item_id(unique) if self.config.use_item_id else None
        return self.combine(self.text[unique], self.tags[unique], None, ids)[inverse]

    def combine(
        self,
        text: torch.Tensor,  # (..., Dt)
        tags: torch.Tensor,  # (..., G)
        delta: torch.Tensor | None = None,  # (..., Dt or D), None for items without one
        ids: torch.Tensor | None = None,  # (..., D) id embeddings (ID-only ablation)
    ) -> torch.Tensor:
        """P([e_text + delta; W_attr t]) (or P([e_text; W_attr t]) + delta in the model
        width) from raw features: also how a product added after training gets its token
        (text and tags only, like any cold item)."""
        in_text = self.config.delta_space == "text"
        text_delta, width_delta = (delta, None) if in_text else (None, delta)
        parts = []
        if self.config.use_text:
            parts.append(text if text_delta is None else text + text_delta)
        if self.config.use_tags:
            parts.append(self.attributes(tags))
        if self.config.use_item_id:
            if ids is None:
                ids = torch.zeros(*text.shape[:-1], self.config.dim, device=text.device)
            parts.append(ids)
        tokens = self.project(torch.cat(parts, dim=-1))
        return tokens if width_delta is None else tokens + width_delta
