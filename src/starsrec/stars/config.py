"""`ModelConfig`: STARS's sizes and one switch per component (the defaults are full STARS)."""

from __future__ import annotations

from dataclasses import dataclass

REPEAT_FEATURES = 6  # see STARS.repeat_bonus in starsrec.stars.model


@dataclass(frozen=True)
class ModelConfig:
    """Model sizes and one switch per STARS component (the defaults are full STARS)."""

    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_length: int = 50
    attribute_dim: int = 32
    session_gap_minutes: float = 30.0
    # Share of warm items treated as cold (no delta, no bias) at each training step, so the
    # model also learns to score items from text and tags alone (the cold-start path).
    cold_dropout: float = 0.1
    # Score an item that did not exist yet at a training request (its first event comes
    # later) the way serving scores a product without training events: text and tags
    # only, plus one learned new-item bias. That bias learns how often shoppers buy a
    # product nobody has bought before, which is what ranks new products (cold start).
    # None: the training data decides, by the one rule `new_item_bias_on`.
    use_new_item_bias: bool | None = None
    repeat_half_life_days: float = 30.0
    # How much a basket further back counts in an item's recent share of the shopper's
    # baskets (a repeat feature): TIFU-KNN's within-basket decay r_b, in (0, 1).
    repeat_basket_decay: float = 0.8
    use_text: bool = True
    use_delta: bool = True
    # Where the per-item residual lives: "text" adds it to the text embedding before the
    # projection (the paper's e_text + delta_i, text-width rows), "width" adds it to the
    # token after the projection (model-width rows: 6x fewer parameters at dim 64 with
    # MiniLM's 384; issue 21: level with "text" on validation on all three datasets, at a
    # sixth of the values, so the default).
    delta_space: str = "width"
    use_tags: bool = True
    use_item_id: bool = False
    use_context: bool = True
    use_recency: bool = True
    use_dual_memory: bool = True
    use_calendar_offsets: bool = True
    use_item_bias: bool = True
    use_repeat_score: bool = True

    def new_item_bias_on(self, exclude_seen: bool = False) -> bool:
        """Whether the new-item bias is on: `use_new_item_bias` when set; unset, off for a
        log where each item is consumed once (`exclude_seen`: a rating log, where a film's
        first rating is not its release; docs/benchmarks.md has the measurement) and on
        otherwise (a shop log, where an item's first sale follows its launch), which is
        also what a model built without training data to decide gets. `StarsRecommender.fit`
        saves the decision in the config; an old config.json's unset value loads as on."""
        if self.use_new_item_bias is None:
            return not exclude_seen
        return self.use_new_item_bias

    def __post_init__(self) -> None:
        if not 0.0 < self.repeat_basket_decay < 1.0:
            raise ValueError(
                f"repeat_basket_decay must be in (0, 1), got {self.repeat_basket_decay}"
            )
        if self.delta_space not in ("text", "width"):
            raise ValueError(f"delta_space must be 'text' or 'width', got {self.delta_space!r}")
        if not (self.use_text or self.use_tags or self.use_item_id):
            raise ValueError("an item needs a representation: enable text, tags or item id")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")


# Fields earlier versions wrote into config.json, with the one value this version still
# serves: a saved model with that value loads unchanged, any other value needs retraining.
RETIRED_FIELDS = {"use_cold_bias": False}
# Fields that moved to `CalibrationConfig` (StarsConfig.calibration): old name -> new name.
MOVED_TO_CALIBRATION = {
    "use_new_item_calibration": "new_items",
    "use_own_item_calibration": "own_items",
}


def model_config(fields: dict) -> tuple[ModelConfig, dict]:
    """A `ModelConfig` from config.json's fields, retired ones checked and dropped, and the
    `MOVED_TO_CALIBRATION` ones found there, under their `CalibrationConfig` names."""
    fields = dict(fields)
    for name, served in RETIRED_FIELDS.items():
        if name in fields and fields.pop(name) != served:
            raise ValueError(
                f"{name}={not served} is no longer supported: retrain with starsrec train"
            )
    moved = {new: fields.pop(old) for old, new in MOVED_TO_CALIBRATION.items() if old in fields}
    return ModelConfig(**fields), moved
