"""STARS behind the Recommender contract: item features, training, full-catalogue scoring.

`fit` embeds the catalogue's texts (cached), tags them, derives subclasses and classes by
k-means where the catalogue has no taxonomy, builds the country's calendar events, and
trains with early stopping on validation NDCG@10. `score` gives every item the model's one
score (`STARS`). Items never seen in training are scored from their text and tags alone
(their delta stays 0): the cold-start path. After training, the new-item bias and the
own-item re-scoring are fitted on validation (`starsrec.stars.calibration`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from starsrec.data.baskets import BasketTargets
from starsrec.data.calendar import DAY, CalendarEvents
from starsrec.data.cooccurrence import (
    CooccurrenceConfig,
    similarity_table,
    table_from_state,
    table_state,
)
from starsrec.data.files import CALENDAR_FILE
from starsrec.data.integrity import ArtifactError, write_json_atomic
from starsrec.data.interactions import Catalogue, Queries
from starsrec.evaluation.evaluate import validation_metric
from starsrec.features.encoders import named_encoder
from starsrec.features.tags import DOMAINS, default_tagger, tag_catalogue, tagging_texts
from starsrec.features.text import catalogue_groups, embed_items
from starsrec.recommender import (
    Filters,
    Recommender,
    TrainingData,
    apply_filters,
    rebuild_nested_configs,
)
from starsrec.stars import distributed
from starsrec.stars.calibration import (
    CalibrationConfig,
    calibrated,
    coordinate_search,
    new_item_log_odds,
    new_item_offset,
    score_weight_grids,
)
from starsrec.stars.config import ModelConfig, model_config
from starsrec.stars.device import resolve_device
from starsrec.stars.model import STARS
from starsrec.stars.scoring import ScoreParts, cached_scorer, combined, score_parts
from starsrec.stars.train import TrainConfig, TrainingState, train_model

logger = logging.getLogger(__name__)

# Bumped when the model's parameters change shape or meaning; 2: new-item bias, item repeat
# propensity, in-session repeat weight; 3: basket share, user repeat weights; 4: own-item
# buffers; 5: recent share; 6: live weights; 7: tags in the catalogue's domains; 8-9: co-occurrence.
MODEL_FORMAT = 9
# Parameters earlier versions saved that no score reads (the shared cold bias, never on).
RETIRED_STATE = {"model.cold_bias"}


@dataclass(frozen=True)
class StarsConfig:
    """Model, training and item-feature settings.

    text_encoder: "all-MiniLM-L6-v2" (the packaged default), "hashing" (a tiny
    deterministic embedder for tests), or a path to a local sentence-transformers folder.
    use_lexicon_tags: attribute tags from the lexicon (`item_tags`), or none.
    tag_domains: the vocabulary domains tags come from (with "all"); None: `fit` detects
    them from the catalogue (`detect_domains`) and records them here.
    derived_subclasses / derived_classes: k-means cluster counts where the catalogue has none.
    cooccurrence: the item-item table and history of the co-occurrence term.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    cooccurrence: CooccurrenceConfig = field(default_factory=CooccurrenceConfig)
    text_encoder: str = "all-MiniLM-L6-v2"
    use_lexicon_tags: bool = True
    tag_domains: tuple[str, ...] | None = None
    derived_subclasses: int = 64
    derived_classes: int = 16
    embedding_cache: str | None = ".cache/starsrec"
    validation_queries: int = 2000
    score_batch: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):  # from config.json, maybe with retired fields
            model, moved = model_config(self.model)
            object.__setattr__(self, "model", model)
            if moved:
                calibration = self.calibration
                if isinstance(calibration, dict):
                    calibration = CalibrationConfig(**calibration)
                object.__setattr__(self, "calibration", dataclasses.replace(calibration, **moved))
        rebuild_nested_configs(self)
        if self.tag_domains is not None:  # a list when read from config.json
            object.__setattr__(self, "tag_domains", tuple(self.tag_domains))
            unknown = sorted(set(self.tag_domains) - set(DOMAINS))
            if unknown:
                raise ValueError(f"tag_domains: unknown domains {unknown}; known: {DOMAINS}")


def item_tags(config: StarsConfig, read: Sequence[str]) -> np.ndarray:
    """(N, G) float32 tags as trained and served: the lexicon over what the tagger reads
    for each item (`tagging_text`), in `config.tag_domains`; one empty column without tags
    (hand-labelled samples chose this: docs/benchmarks.md "Tags that are right")."""
    if not config.use_lexicon_tags:
        return np.zeros((len(read), 1), dtype=np.float32)
    return default_tagger(config.tag_domains).extract(list(read)).astype(np.float32)


def tag_vocabulary(config: StarsConfig) -> tuple[str, ...]:
    """Tag names of the `item_tags` columns, or ("",) when tags are off."""
    return default_tagger(config.tag_domains).vocabulary if config.use_lexicon_tags else ("",)


def item_features(
    catalogue: Catalogue, config: StarsConfig, tags: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Text embeddings, tags (`item_tags` unless given), subclass and class of every item."""
    texts = list(catalogue.texts)
    cache = Path(config.embedding_cache) if config.embedding_cache else None
    text = embed_items(texts, named_encoder(config.text_encoder, config.seed), cache_dir=cache)
    if tags is None:
        tags = item_tags(config, tagging_texts(catalogue))
    subclass, item_class = catalogue_groups(
        catalogue, text, config.derived_subclasses, config.derived_classes, config.seed
    )
    return {
        "text": text.astype(np.float32),
        "tags": tags.astype(np.float32),
        "subclass": np.maximum(subclass, 0),
        "item_class": np.maximum(item_class, 0),
    }


class StarsRecommender(Recommender):
    """The STARS model (see module doc); ID-only SASRec is the same class with
    `ModelConfig(use_text=False, use_tags=False, use_item_id=True, ...)`."""

    name = "stars"
    config_class = StarsConfig

    def __init__(self, config: StarsConfig = StarsConfig()) -> None:
        super().__init__(config)
        self.model: STARS | None = None
        self.features: dict[str, np.ndarray] = {}
        self.calendar: CalendarEvents | None = None
        self.n_event_types = 1
        self.training_state: TrainingState | None = None  # set by fit, not saved
        # Where fit checkpoints every epoch and resumes from (None: no checkpoints).
        self.checkpoint_dir: Path | None = None
        self.device = torch.device("cpu")  # fit takes config.train.device, load the CPU

    def to(self, device: str | torch.device) -> StarsRecommender:
        """Move the model to `device` (a torch device or a `resolve_device` name); returns self."""
        self.device = resolve_device(device) if isinstance(device, str) else device
        if self.model is not None:
            self.model.to(self.device)
        return self

    def _fit(self, data: TrainingData) -> None:
        # The new-item bias, decided by its one rule on this data and saved with the model.
        decided = self.config.model.new_item_bias_on(data.exclude_seen)
        model = dataclasses.replace(self.config.model, use_new_item_bias=decided)
        self.config = dataclasses.replace(self.config, model=model)
        logger.info("new-item bias %s", "on" if decided else "off")
        tags = None
        if self.config.use_lexicon_tags and self.config.tag_domains is None:
            domains, tags = tag_catalogue(tagging_texts(data.catalogue))
            self.config = dataclasses.replace(self.config, tag_domains=domains)
        config = self.config
        torch.manual_seed(config.seed)
        with distributed.main_first():  # rank 0 fills the embedding cache, the rest read it
            self.features = item_features(data.catalogue, config, tags)
        warm = np.bincount(data.train.item, minlength=data.catalogue.size) > 0
        self.features["warm"] = warm.astype(np.float32)
        first_day = np.full(data.catalogue.size, np.inf)
        np.minimum.at(first_day, data.train.item, data.train.timestamp / DAY)
        self.features["first_day"] = first_day.astype(np.float32)
        table = similarity_table(data.train, data.catalogue.size, config.cooccurrence)
        self.features |= table_state(table, "cooccurrence.")
        years = data.train.timestamp.astype("datetime64[s]").astype("datetime64[Y]").astype(int)
        first, last = (int(years.min()) + 1970, int(years.max()) + 1971) if len(years) else (0, 0)
        self.calendar = CalendarEvents.build(data.country, first - 1, last + 1)
        self.n_event_types = len(data.train.event_types)
        self.model = self._build()
        self.to(config.train.device)
        validate = None
        if data.validation is not None and len(data.validation):
            assert data.validation_targets is not None  # given with the validation queries
            keep = np.arange(min(config.validation_queries, len(data.validation)))
            queries, targets = data.validation[keep], data.validation_targets.take(keep)

            def validate(model: STARS) -> float:
                model.eval()
                return validation_metric(self, queries, targets, data.exclude_seen)

        self.training_state = train_model(
            self.model,
            data.train,
            self.features["subclass"],
            self.calendar,
            dataclasses.replace(config.train, seed=config.seed),
            validate=validate,
            checkpoint_dir=self.checkpoint_dir,
        )
        if validate is not None:
            self.calibrate(queries, targets, data.exclude_seen)

    def diagnostics(self, queries: Queries, targets: BasketTargets) -> dict[str, float]:
        """best_epoch (the validation epoch whose weights were kept) and epochs_run, from
        the fit in this process (none after `load`): a best epoch at the cap says more epochs
        could help; and the own-item re-scoring that calibration chose."""
        state = self.training_state
        if state is None:
            return {}
        fitted = {name: float(value) for name, value in calibrated(self._fitted_model()).items()}
        return {"best_epoch": float(state.best_epoch), "epochs_run": float(state.epoch)} | fitted

    def calibrate(self, queries: Queries, targets: BasketTargets, exclude_seen: bool) -> None:
        """The steps after training that `config.calibration` switches on, where they apply,
        on the validation `queries` (the score steps on parts computed once: `cached_scorer`)."""
        steps, model = self.config.calibration, self.config.model
        if steps.new_items and model.use_item_bias and model.new_item_bias_on():
            self.calibrate_new_items(queries, targets, exclude_seen)
        # Own items are re-scored where they can be recommended and are scored apart.
        own_items = steps.own_items and not exclude_seen and model.use_repeat_score
        if own_items or steps.live or steps.cooccurrence:
            live, cooccurrence = steps.live, steps.cooccurrence
            score = cached_scorer(
                self._fitted_model(),
                self._fitted_catalogue().size,
                lambda lo, hi: self.score_parts(queries[lo:hi], live, cooccurrence),
            )
            self.calibrate_scores(
                lambda _: validation_metric(self, queries, targets, exclude_seen, score=score),
                own_items,
                live,
                cooccurrence,
            )

    @torch.no_grad()
    def calibrate_new_items(
        self, queries: Queries, targets: BasketTargets, exclude_seen: bool
    ) -> None:
        """Move the new-item bias by the maximum-likelihood offset on validation
        (`calibration.new_item_offset`); unchanged when too few targets are new items."""
        new_items = self.features["warm"] == 0
        filters = Filters(exclude_seen=exclude_seen)
        log_odds = []
        for lo in range(0, len(queries), self.config.score_batch):
            part = queries[lo : lo + self.config.score_batch]
            scores = self.score(part)
            apply_filters(scores, part, self._fitted_catalogue(), filters)
            log_odds.append(new_item_log_odds(scores, new_items))
        # One observation per target item: a basket's query counts once per item in it.
        per_target = np.repeat(np.concatenate(log_odds), targets.sizes)
        offset = new_item_offset(per_target, new_items[targets.items])
        if offset is not None:
            self._fitted_model().new_item_bias.add_(offset)

    @torch.no_grad()
    def calibrate_scores(
        self, validate: Callable[[STARS], float], own_items: bool, live: bool, cooccurrence: bool
    ) -> None:
        """Fit the own-item re-scoring (`STARS.own_item_adjustment`), the live-signal weights
        (`STARS.live_score`) and the co-occurrence weight and scale (`STARS.cooccurrence_score`) of
        the steps switched on, on the validation metric (`coordinate_search` over
        `score_weight_grids`); each stays a no-op unless a setting does strictly better."""
        model = self._fitted_model()
        values = calibrated(model)
        names, blocks = score_weight_grids(self.config.calibration, own_items, live, cooccurrence)

        def apply(setting: tuple[float, ...]) -> None:
            for name, value in zip(names, setting, strict=True):
                values[name].fill_(value)

        coordinate_search(", ".join(names), lambda: validate(model), blocks, apply)

    def _fitted_model(self) -> STARS:
        if self.model is None:
            raise RuntimeError("stars is not fitted: call fit() or load()")
        return self.model

    def cooccurrence_table(self) -> sp.csr_matrix:
        """(N, N) the item-item similarity table of the co-occurrence term, built by `fit`
        from the training events (`starsrec.data.cooccurrence`)."""
        return table_from_state(self.features, "cooccurrence.")

    def _fitted_calendar(self) -> CalendarEvents:
        if self.calendar is None:  # set with the model, by fit and load
            raise RuntimeError("stars is not fitted: call fit() or load()")
        return self.calendar

    def _build(self) -> STARS:
        features = self.features
        return STARS(
            self.config.model,
            text=torch.from_numpy(features["text"]),
            tags=torch.from_numpy(features["tags"]),
            item_class=torch.from_numpy(features["item_class"]),
            warm=torch.from_numpy(features["warm"] > 0),
            n_event_types=self.n_event_types,
            n_calendar_events=len(self._fitted_calendar().names),
            first_day=torch.from_numpy(features["first_day"]) if "first_day" in features else None,
        )

    def score(self, queries: Queries) -> np.ndarray:
        """(Q, N) float32 served score of every item (`starsrec.stars.scoring`): the model's
        terms for each query's recent history, `live_score` for all shoppers' sales before
        its time and `cooccurrence_score` for its latest purchases, where their weights
        are fitted."""
        model = self._fitted_model()
        live = bool(model.live_weights.any())
        parts = self.score_parts(queries, live, bool(model.cooccurrence_weight != 0))
        return combined(model, parts, None, self._fitted_catalogue().size)

    def score_parts(self, queries: Queries, live: bool, cooccurrence: bool) -> list[ScoreParts]:
        """`scoring.score_parts` of `queries`, with the live counts and co-occurrence sums
        where asked for."""
        table = self.cooccurrence_table() if cooccurrence else None
        return score_parts(
            self._fitted_model(),
            self._fitted_calendar(),
            queries,
            self.config.score_batch,
            live,
            table,
            self.config.cooccurrence,
        )

    def _state(self) -> dict[str, np.ndarray]:
        model = self._fitted_model()
        state = {f"model.{k}": v.cpu().numpy() for k, v in model.state_dict().items()}
        state |= {f"features.{k}": v for k, v in self.features.items()}
        calendar = self._fitted_calendar()
        state |= {
            "calendar.event": calendar.event,
            "calendar.first_day": calendar.first_day,
            "calendar.last_day": calendar.last_day,
            "n_event_types": np.array([self.n_event_types]),
            "model_format": np.array([MODEL_FORMAT]),
        }
        return state

    def _save_extra(self, out: Path) -> list[str]:
        """The calendar event names (strings live in JSON)."""
        write_json_atomic(out / CALENDAR_FILE, {"names": list(self._fitted_calendar().names)})
        return [CALENDAR_FILE]

    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:
        names = tuple(json.loads((path / CALENDAR_FILE).read_text())["names"])
        self.calendar = CalendarEvents(
            names, state["calendar.event"], state["calendar.first_day"], state["calendar.last_day"]
        )
        self.features = {
            k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")
        }
        self.n_event_types = int(state["n_event_types"][0])
        written = int(state.get("model_format", [1])[0])
        if written != MODEL_FORMAT:
            raise ArtifactError(
                f"{path} holds STARS model format {written}; this starsrec reads format "
                f"{MODEL_FORMAT} (its parameters changed): retrain it with starsrec train"
            )
        self.model = self._build()
        self.model.load_state_dict(
            {
                k[len("model.") :]: torch.from_numpy(v)
                for k, v in state.items()
                if k.startswith("model.") and k not in RETIRED_STATE
            }
        )
        self.model.eval()
        self.device = torch.device("cpu")  # read into host memory; `to` moves it
