"""The STARS model, in the paper's order (DESIGN section 1).

1. Semantic item tokens: v_i = P([e_text(i) + delta_i ; W_attr t_i]) (+ an id embedding
   for the ID-only ablation). The same token is the item's retrieval vector (tied).
2. Event tokens x_t = v_item + E_engage[type] + E_ctx(hour, weekday) + E_pos + E_recency,
   after a [USER] token, through a causal pre-LN transformer.
3. Dual memory: short-term u_S = output at the last event, long-term u_L = a pooled
   summary of the whole history; u = g * u_S + (1 - g) * u_L with a learned gate, and
   u = u_L when the request comes after the session gap (no current session).
4. Scoring: score(u, i, c) = <u + q(c), e_i> + b_i + sum_k active_k(c) o[k, class(i)]
   (an item without training events: e_i from text and tags, b_i the learned new-item
   bias, moved after training to its maximum-likelihood value on validation; in training,
   so is every item before its first event) + a learned bonus for items in the user's own
   history (repeat purchases; outside the inner product), whose taste term is re-weighted,
   offset and joined by their recent share of the shopper's baskets (`own_item_adjustment`)
   + all shoppers' recent sales (`live_score`) + co-occurrence with the user's latest
   purchases (`cooccurrence_score`), the last three weighted by scalars fitted on
   validation. A request without history gets q(c), biases, offsets and live signals.

The served score is defined here once: `user_side` (the query), `item_terms` and
`calendar_terms` (the item side), `own_item_score` (what the user's own items add),
`live_score` and `cooccurrence_score` (what recent sales and the latest purchases add), and
`retrieval_items` / `retrieval_queries` (the same score as one inner product). Training
(through `score_inner`, that inner product over sampled candidates, checked against the
plain `score`), the offline scorer, the exported encoder and the service call these.

Every component has a switch in `ModelConfig`; all off but `use_item_id` is SASRec.
Shapes: B batch, T events, N items, D model width, K calendar events, C candidates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from starsrec.data.live import LIVE_HALF_LIVES_DAYS
from starsrec.stars.batch import PAD, RECENCY_BUCKETS, EventBatch, slot_of
from starsrec.stars.config import REPEAT_FEATURES, ModelConfig
from starsrec.stars.layers import Block
from starsrec.stars.repeats import RepeatFeatures, recent_share
from starsrec.stars.tokens import ItemTokens

SCORE_BLOCKS = 8  # of `STARS.score_inner`: more, and each of its products is smaller


class STARS(nn.Module):
    """Sequence encoder, dual memory and context-aware scoring (see module doc)."""

    item_class: torch.Tensor  # buffers (register_buffer), declared for the type checker
    first_day: torch.Tensor
    own_item_taste: torch.Tensor
    own_item_offset: torch.Tensor
    own_item_recent: torch.Tensor
    live_weights: torch.Tensor
    cooccurrence_weight: torch.Tensor
    cooccurrence_scale: torch.Tensor

    def __init__(
        self,
        config: ModelConfig,
        text: torch.Tensor,  # (N, Dt)
        tags: torch.Tensor,  # (N, G)
        item_class: torch.Tensor,  # (N,) long, class for calendar offsets
        warm: torch.Tensor,  # (N,) bool, items seen in training
        n_event_types: int,
        n_calendar_events: int,
        first_day: torch.Tensor | None = None,  # (N,) day of each item's first training event
    ) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.n_classes = int(item_class.max()) + 1 if len(item_class) else 1
        self.register_buffer("item_class", torch.cat([item_class.new_zeros(1), item_class]))
        if first_day is None:  # no times given: warm items existed all along
            first_day = torch.where(warm.bool(), -torch.inf, torch.inf)
        first_day = torch.cat([torch.full((1,), torch.inf), first_day.float()])
        self.register_buffer("first_day", first_day, persistent=False)  # (N+1,)
        # 1. item tokens
        self.item_tokens = ItemTokens(config, text, tags, warm)
        # 2. event tokens and the encoder
        self.engagement = nn.Embedding(n_event_types, dim)
        self.hour = nn.Embedding(24, dim)
        self.weekday = nn.Embedding(7, dim)
        self.position = nn.Embedding(config.max_length + 1, dim)
        self.recency = nn.Embedding(RECENCY_BUCKETS, dim)
        self.user_token = nn.Parameter(torch.zeros(dim))
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(dim)
        # 3. dual memory
        self.long_term = nn.Linear(dim, dim)
        self.gate = nn.Linear(3 * dim, dim)
        # 4. context query offset, item bias, calendar offsets, repeat bonus
        self.request_hour = nn.Embedding(24, dim)
        self.request_weekday = nn.Embedding(7, dim)
        self.request_month = nn.Embedding(12, dim)
        self.item_bias = nn.Embedding(len(item_class) + 1, 1)
        nn.init.zeros_(self.item_bias.weight)
        self.new_item_bias = nn.Parameter(torch.zeros(()))
        self.calendar_offsets = nn.Parameter(torch.zeros(max(n_calendar_events, 1), self.n_classes))
        # Repeat weights (features in `repeat_bonus`) plus a per-user part read from the
        # query, zero at the start so training begins from the shared weights.
        self.repeat_weights = nn.Parameter(torch.zeros(REPEAT_FEATURES))
        self.user_repeat = nn.Linear(dim, REPEAT_FEATURES, bias=False)
        nn.init.zeros_(self.user_repeat.weight)
        self.item_repeat = nn.Embedding(len(item_class) + 1, 1)  # per-item rebuy propensity
        nn.init.zeros_(self.item_repeat.weight)
        # Own-item re-scoring, live signals, co-occurrence: no-ops, fitted on validation.
        self.register_buffer("own_item_taste", torch.ones(()))
        self.register_buffer("own_item_offset", torch.zeros(()))
        self.register_buffer("own_item_recent", torch.zeros(()))
        self.register_buffer("live_weights", torch.zeros(len(LIVE_HALF_LIVES_DAYS) + 1))
        self.register_buffer("cooccurrence_weight", torch.zeros(()))
        self.register_buffer("cooccurrence_scale", torch.ones(()))
        for embedding in (self.engagement, self.hour, self.weekday, self.position, self.recency):
            nn.init.normal_(embedding.weight, std=0.02)
        for context in (self.request_hour, self.request_weekday, self.request_month):
            nn.init.zeros_(context.weight)

    @property
    def device(self) -> torch.device:
        """Where the model's tensors live (`starsrec.stars.device`)."""
        return self.item_class.device

    # -- 2. sequence encoder ------------------------------------------------------------
    def encode(self, batch: EventBatch, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) events -> (B, T + 1, D) outputs; position 0 is the [USER] token.
        `tokens` (B, T, D): the events' item tokens when the caller has them (serving)."""
        config = self.config
        valid = batch.items != PAD  # (B, T)
        tokens = self.item_tokens(batch.items) if tokens is None else tokens
        x = tokens + self.engagement(batch.event_types)
        if config.use_context:
            x = x + self.hour(batch.hours) + self.weekday(batch.weekdays)
        if config.use_recency:
            x = x + self.recency(batch.recency)
        # Positions count back from the most recent event, so left padding does not shift them.
        length = batch.items.shape[1]
        back = torch.arange(length - 1, -1, -1, device=x.device).clamp(max=config.max_length)
        x = x + self.position(back)
        user = self.user_token.expand(x.shape[0], 1, -1)
        x = self.dropout(torch.cat([user, x], dim=1))  # (B, T+1, D)
        keys = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)  # (B, T+1)
        causal = torch.ones(length + 1, length + 1, dtype=torch.bool, device=x.device).tril()
        # Each position sees earlier valid events and always itself (no empty rows).
        eye = torch.eye(length + 1, dtype=torch.bool, device=x.device)
        mask = ((causal & keys[:, None, :]) | eye)[:, None]  # (B, 1, T+1, T+1)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    # -- 3. dual memory -----------------------------------------------------------------
    def memories(
        self, batch: EventBatch, tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) each: short-term memory u_S, long-term memory u_L and the gate weight g
        of u_S (0 where the request opens a new session; 1 without dual memory)."""
        hidden = self.encode(batch, tokens)  # (B, T+1, D)
        short = hidden[:, 1:]  # u_S at each event, (B, T, D)
        if not self.config.use_dual_memory:
            return short, torch.zeros_like(short), torch.ones_like(short)
        valid = F.pad((batch.items != PAD).long(), (1, 0), value=1)[..., None]  # [USER] counts
        pooled = (hidden * valid).cumsum(1) / valid.cumsum(1)  # causal mean
        long = self.long_term(pooled[:, 1:])  # u_L, (B, T, D)
        context = self.context_offset(
            batch.request_hour, batch.request_weekday, batch.request_month
        )
        gate = torch.sigmoid(self.gate(torch.cat([short, long, context], dim=-1)))
        # After the session gap there is no current session: u = u_L.
        gate = torch.where(batch.new_session.unsqueeze(-1), torch.zeros_like(gate), gate)
        return short, long, gate

    def user_side(
        self, batch: EventBatch, tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) each: the query u + q(c) for the request after each event, and the
        u_S, u_L and g behind it. Where there is no event (padding), the query is q(c)
        alone: the context-and-popularity score of a request without history."""
        short, long, gate = self.memories(batch, tokens)
        context = self.request_context(
            batch.request_hour, batch.request_weekday, batch.request_month
        )
        query = gate * short + (1 - gate) * long
        if self.config.use_context:
            query = query + context
        query = torch.where((batch.items == PAD).unsqueeze(-1), context, query)
        return query, short, long, gate

    def context_offset(self, hour: torch.Tensor, weekday: torch.Tensor, month: torch.Tensor):
        """q(c): (..., D) offset from the request's (...) hour, weekday and month."""
        return self.request_hour(hour) + self.request_weekday(weekday) + self.request_month(month)

    def request_context(self, hour: torch.Tensor, weekday: torch.Tensor, month: torch.Tensor):
        """(..., D) q(c) as the score uses it: zero with context switched off."""
        context = self.context_offset(hour, weekday, month)
        return context if self.config.use_context else torch.zeros_like(context)

    def context_table(self) -> torch.Tensor:
        """(24, 7, 12, D) `request_context` of every (hour, weekday, month): the service
        reads a request's row of it instead of running the embeddings."""
        hour, weekday, month = (torch.arange(n, device=self.device) for n in (24, 7, 12))
        return self.request_context(*torch.meshgrid(hour, weekday, month, indexing="ij"))

    # -- 4. scoring ---------------------------------------------------------------------
    def item_vectors(
        self, slots: torch.Tensor | None = None, owned: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(C, D) retrieval vectors of item slots (all items when None), tied to tokens."""
        if slots is None:
            slots = slot_of(torch.arange(self.item_class.shape[0] - 1, device=self.device))
        return self.item_tokens(slots, owned)

    def item_terms(
        self, slots: torch.Tensor, request_events: torch.Tensor, owned: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Item bias (C,) and calendar offsets (..., C) of candidates under (..., K) events."""
        offsets = self.calendar_terms(request_events)  # (..., n_classes)
        return self.item_bias_terms(slots, owned), offsets[..., self.item_class[slots]]

    def item_bias_terms(self, slots: torch.Tensor, owned: torch.Tensor | None = None):
        """(C,) b_i: the one rule for an item's bias. An item owns a learned bias when it
        was seen in training (and is not dropped, `owned`); a warm item dropped in training
        has none (0), an item never seen in training gets the new-item bias."""
        if not self.config.use_item_bias:
            return torch.zeros(slots.shape, device=slots.device)
        warm = self.item_tokens.warm[slots]
        owned = warm if owned is None else owned
        zero = torch.zeros((), device=slots.device)
        new = self.new_item_bias if self.config.new_item_bias_on() else zero
        cold = torch.where(warm > 0, zero, new)
        return self.item_bias(slots).squeeze(-1) * owned + cold * (1 - owned)

    def calendar_terms(self, request_events: torch.Tensor) -> torch.Tensor:
        """(..., K) active calendar events -> (..., n_classes) sum_k active_k o[k, class]:
        the one place where calendar offsets switched off mean zero."""
        offsets = request_events @ self.calendar_offsets
        return offsets if self.config.use_calendar_offsets else torch.zeros_like(offsets)

    def user_repeat_weights(self, query: torch.Tensor) -> torch.Tensor:
        """(..., D) queries -> (..., F) repeat-bonus weights: shared plus per user."""
        return self.repeat_weights + self.user_repeat(query)

    def repeat_bonus(
        self, repeats: RepeatFeatures, slots: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Learned score for items already in the user's history, from how often and how
        long ago the user had them, whether in the current session (a grocery basket
        rarely holds an item twice), their share of all and of the latest baskets, and
        the item's own rebuy propensity. `repeats`, item `slots` and weights[..., f]
        (from `user_repeat_weights`) broadcast together."""
        if not self.config.use_repeat_score:
            return torch.zeros_like(repeats.counts)
        count, sessions = repeats.counts, repeats.sessions
        age = repeats.age_days.clamp(min=0)
        seen = (count > 0).float()
        features = (
            torch.log1p(count),
            seen,
            1.0 / (1.0 + age / self.config.repeat_half_life_days),
            (age * 24 * 60 <= self.config.session_gap_minutes).float(),
            count / sessions.clamp(min=1),
            recent_share(repeats, self.config.repeat_basket_decay),
        )
        bonus = self.item_repeat(slots).squeeze(-1) * seen  # per-item rebuy propensity
        for k, feature in enumerate(features):
            bonus = bonus + weights[..., k] * feature
        return bonus

    def own_item_adjustment(self, taste: torch.Tensor, repeats: RepeatFeatures) -> torch.Tensor:
        """What re-scoring adds to the user's own items: their `taste` <u + q(c), e_i> becomes
        own_item_taste x taste + own_item_offset + own_item_recent x `recent_share`. Sampled
        training sees few of a shopper's own items at once, and orders them worse than their
        recent share alone does (docs/benchmarks.md)."""
        seen = (repeats.counts > 0).float()
        adjusted = (self.own_item_taste - 1.0) * taste + self.own_item_offset
        share = recent_share(repeats, self.config.repeat_basket_decay)
        return seen * adjusted + self.own_item_recent * share

    def own_item_score(
        self,
        taste: torch.Tensor | None,
        repeats: RepeatFeatures,
        slots: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        """What an item adds to the score for being in the user's history: the repeat bonus
        plus the own-item re-scoring of its `taste` term (arguments as `repeat_bonus`).
        Training passes taste None: the re-scoring is fitted after training."""
        bonus = self.repeat_bonus(repeats, slots, weights)
        if taste is None:
            return bonus
        return bonus + self.own_item_adjustment(taste, repeats)

    def live_score(self, counts: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """(..., C, H) live counts (`starsrec.data.live`, one per half-life) of C candidates,
        (C,) whether each is new (no training events) -> (..., C): sum_h w_h log1p(count_h)
        plus, for new items, w_new log1p(count over the longest half-life): a product
        launched since training has no learned bias, its sales are all the model knows."""
        features, weights = torch.log1p(counts), self.live_weights
        return features @ weights[:-1] + weights[-1] * new.float() * features[..., -1]

    def cooccurrence_score(self, similarity: torch.Tensor) -> torch.Tensor:
        """(..., C) co-occurrence sums of C candidates with the user's latest purchases
        (`starsrec.data.cooccurrence`) -> (..., C): w log1p(sum / scale), both fitted."""
        return self.cooccurrence_weight * torch.log1p(similarity / self.cooccurrence_scale)

    def score(
        self,
        query: torch.Tensor,
        slots: torch.Tensor,
        request_events: torch.Tensor,
        request_days: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(..., D) queries x (C,) candidate slots -> (..., C) scores before repeat bonus.
        With the (...,) `request_days` (training), an item whose first event is at or after
        the request did not exist yet: it is scored as a new item (text, tags, new-item bias)."""
        owned = self.item_tokens.owned(slots)  # one cold-dropout draw for vector and bias
        days = request_days if self.config.new_item_bias_on() else None  # None: none new
        vectors, new_vectors = self.item_tokens.with_cold(slots, owned, days is not None)
        bias, offsets = self.item_terms(slots, request_events, owned)
        scores = query @ vectors.T + bias + offsets
        if days is None:
            return scores
        unseen = self.first_day[slots] >= days[..., None]  # (..., C)
        new_bias = self.new_item_bias if self.config.use_item_bias else 0.0
        return torch.where(unseen, query @ new_vectors.T + new_bias + offsets, scores)

    def score_inner(
        self,
        query: torch.Tensor,
        slots: torch.Tensor,
        request_events: torch.Tensor,
        request_days: torch.Tensor | None,
        shift: torch.Tensor,
        owned: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`score` of (P, D) queries plus a (C,) per-candidate `shift` (training's -log Q), as
        inner products [u + q(c), 1, events] . [e_i, b_i + shift_i, o[:, class(i)]] (training
        spends most of its time on (P, C) tensors); equal to `score` to float rounding.
        `owned`: the cold-dropout draw (`item_tokens.owned(slots)`), drawn here when None.
        Items new to a request take a second product, per row block only over the columns
        new to some of its rows (rows in request-time order, columns in first-day order, as
        training sorts them, make those few; any order gives the same numbers)."""
        owned = self.item_tokens.owned(slots) if owned is None else owned
        columns = [query, torch.ones_like(query[:, :1])]
        offsets = self.calendar_offsets[:, self.item_class[slots]].T  # (C, K)
        if self.config.use_calendar_offsets:
            columns.append(request_events)
        queries = torch.cat(columns, dim=-1)  # (P, D + 1 [+ K])

        def items(vectors: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            rows = [vectors, (bias + shift)[:, None]]
            if self.config.use_calendar_offsets:
                rows.append(offsets)
            return torch.cat(rows, dim=1)  # (C, D + 1 [+ K])

        days = request_days if self.config.new_item_bias_on() else None  # None: none new
        vectors, new_vectors = self.item_tokens.with_cold(slots, owned, days is not None)
        seen = items(vectors, self.item_bias_terms(slots, owned))
        if days is None:
            return queries @ seen.T
        new_bias = self.new_item_bias if self.config.use_item_bias else shift.new_zeros(())
        new = items(new_vectors, new_bias.expand_as(shift))
        first_day, width, blocks = self.first_day[slots], len(slots), []
        for rows, row_days in zip(
            queries.tensor_split(SCORE_BLOCKS), days.tensor_split(SCORE_BLOCKS), strict=True
        ):
            if not len(row_days):  # fewer rows than blocks
                continue
            # An item is new to a request when its first day is at or after the request's:
            # columns before `lo` are seen by every row, from `hi` on new to every row.
            lo = int((first_day < row_days.min()).long().cumprod(0).sum())
            hi = width - int((first_day.flip(0) >= row_days.max()).long().cumprod(0).sum())
            as_seen, as_new = rows @ seen[:hi].T, rows @ new[lo:].T  # (rows, hi), (rows, C - lo)
            unseen = first_day[lo:hi] >= row_days[:, None]  # (rows, hi - lo)
            mixed = torch.where(unseen, as_new[:, : hi - lo], as_seen[:, lo:])
            blocks.append(torch.cat([as_seen[:, :lo], mixed, as_new[:, hi - lo :]], dim=1))
        return torch.cat(blocks)

    # -- 5. the same score as one inner product, for MIPS serving (DESIGN 1.3) ----------
    def retrieval_items(
        self, tokens: torch.Tensor, bias: torch.Tensor, item_class: torch.Tensor
    ) -> torch.Tensor:
        """(C, D + 1 + n_classes) [e_i, b_i, onehot(class(i))] from (C, D) tokens, (C,) biases
        and (C,) classes."""
        onehot = F.one_hot(item_class, self.n_classes).float()
        return torch.cat([tokens, bias[:, None], onehot], dim=1)

    def retrieval_queries(self, query: torch.Tensor, request_events: torch.Tensor) -> torch.Tensor:
        """(B, D + 1 + n_classes) [u + q(c), 1, sum_k active_k o[k, :]] from (B, D) queries
        and (B, K) active calendar events."""
        offsets = self.calendar_terms(request_events)  # (B, n_classes)
        return torch.cat([query, torch.ones_like(query[:, :1]), offsets], dim=1)

    def item_biases(self) -> torch.Tensor:
        """(N,) the bias b_i each catalogue item is served with (eval mode: no dropout)."""
        return self.item_bias_terms(
            slot_of(torch.arange(self.item_class.shape[0] - 1, device=self.device))
        )
