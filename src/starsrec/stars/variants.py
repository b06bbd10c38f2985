"""Named STARS configurations: the ablation table's variants and ID-only SASRec."""

from __future__ import annotations

import dataclasses

from starsrec.stars.recommender import StarsConfig, StarsRecommender

# Named configurations for the benchmark's ablation table: (model switches, training
# overrides[, calibration switches]). "no-text" swaps the frozen text vector for a learned
# id embedding, since an item needs some representation; "sasrec" is every STARS component
# off but item ids.
VARIANTS: dict[str, tuple[dict, ...]] = {
    "stars": ({}, {}),
    "sasrec": (
        {
            "use_text": False,
            "use_delta": False,
            "use_tags": False,
            "use_item_id": True,
            "use_context": False,
            "use_recency": False,
            "use_dual_memory": False,
            "use_calendar_offsets": False,
            "use_item_bias": False,
            "use_repeat_score": False,
            "use_new_item_bias": False,
        },
        # SASRec's own optimiser, AdamW for every parameter, its item embeddings included.
        {"subclass_negatives": 0, "item_optimizer": "adamw", "item_learning_rate": None},
        {"new_items": False, "own_items": False, "live": False, "cooccurrence": False},
    ),
    "stars-no-delta": ({"use_delta": False}, {}),
    "stars-no-tags": ({"use_tags": False}, {}),
    "stars-no-text": ({"use_text": False, "use_delta": False, "use_item_id": True}, {}),
    "stars-no-dual-memory": ({"use_dual_memory": False}, {}),
    "stars-no-calendar": ({"use_calendar_offsets": False}, {}),
    "stars-no-subclass-negatives": ({}, {"subclass_negatives": 0}),
    "stars-no-repeat": ({"use_repeat_score": False}, {}),
    "stars-next-basket-loss": ({}, {"next_basket_loss": True}),
    "stars-no-new-item-bias": ({"use_new_item_bias": False}, {}),
    "stars-no-own-item-calibration": ({}, {}, {"own_items": False}),
    "stars-no-new-item-calibration": ({}, {}, {"new_items": False}),
    "stars-no-live": ({}, {}, {"live": False}),
    "stars-no-cooccurrence": ({}, {}, {"cooccurrence": False}),
}


def stars_variant(name: str, config: StarsConfig = StarsConfig()) -> StarsRecommender:
    """A STARS recommender with the switches of variant `name` applied to `config`."""
    if name not in VARIANTS:
        raise ValueError(f"unknown STARS variant {name!r}; choose from {', '.join(VARIANTS)}")
    model_switches, train_overrides, *calibration = VARIANTS[name]
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, **model_switches),
        train=dataclasses.replace(config.train, **train_overrides),
        calibration=dataclasses.replace(config.calibration, **(calibration or [{}])[0]),
    )
    return StarsRecommender(config)
