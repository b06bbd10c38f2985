"""STARS's optimisers: AdamW for everything (the default), or AdamW for the network and a
row-wise Adagrad for the item tables (issue 21: optimiser memory that grows by one value
per item, not two per parameter value).

An item table is a parameter with one row per item slot (the residuals delta_i, the item
biases, the repeat weights, the ID-only ablation's embeddings). AdamW keeps two moments per
value: with the text-space residual (384 values an item) that is about 4.6 GB of parameters
and state per million items. `RowWiseAdagrad` keeps one accumulator per row, the mean of
the row's squared gradients, and moves only the rows a step touched (weight decay too), as
large-scale recommenders train their embedding tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

OPTIMIZERS = ("adamw", "rowwise-adagrad")


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per row (see module doc). Rows whose gradient is zero
    this step are left as they are."""

    def __init__(
        self, params: Iterable[Any], lr: float, weight_decay: float = 0.0, eps: float = 1e-10
    ) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """One update of every row with a nonzero gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.reshape(len(p), -1)  # (rows, values per row)
                rows = grad.abs().sum(dim=1).nonzero().squeeze(1)  # (touched,)
                if not len(rows):
                    continue
                state = self.state[p]
                if not state:
                    state["sum"] = torch.zeros(len(p), dtype=torch.float32, device=p.device)
                touched = grad[rows]  # (touched, values)
                state["sum"][rows] += touched.pow(2).mean(dim=1)
                scale = group["lr"] / (state["sum"][rows].sqrt() + group["eps"])  # (touched,)
                values = p.reshape(len(p), -1)  # a view: updates land in p
                if group["weight_decay"]:
                    values[rows] *= 1 - group["lr"] * group["weight_decay"]
                values[rows] -= scale[:, None] * touched


class Optimizers:
    """Several optimisers stepped as one and saved as one state dict, in the format a
    single torch optimiser's has (what `starsrec.stars.checkpoint` writes)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every optimiser's gradients."""
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """Step every optimiser."""
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """One state dict: parameters numbered across the optimisers, in order; each group
        says which optimiser it belongs to."""
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for number, optimizer in enumerate(self.optimizers):
            own = optimizer.state_dict()
            state |= {offset + index: values for index, values in own["state"].items()}
            for group in own["param_groups"]:
                params = [offset + index for index in group["params"]]
                groups.append(group | {"params": params, "optimizer": number})
            offset += sum(len(g["params"]) for g in own["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore what `state_dict` gave."""
        offset = 0
        for number, optimizer in enumerate(self.optimizers):
            groups = [g for g in saved["param_groups"] if g["optimizer"] == number]
            count = sum(len(g["params"]) for g in groups)
            optimizer.load_state_dict(
                {
                    "state": {
                        index - offset: values
                        for index, values in saved["state"].items()
                        if offset <= index < offset + count
                    },
                    "param_groups": [
                        {k: v for k, v in g.items() if k != "optimizer"}
                        | {"params": [i - offset for i in g["params"]]}
                        for g in groups
                    ],
                }
            )
            offset += count


def stars_optimizer(
    model: torch.nn.Module,
    items: int,
    kind: str,
    learning_rate: float,
    weight_decay: float,
    delta_weight_decay: float,
    item_learning_rate: float | None = None,
) -> torch.optim.Optimizer | Optimizers:
    """The optimiser `kind` (one of OPTIMIZERS) for STARS `model` with `items` item slots
    (the catalogue and the padding slot). The residuals decay towards zero (towards the text
    vector) by `delta_weight_decay`, other matrices by `weight_decay`; embeddings and
    vectors do not decay."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimiser {kind!r}; choose from {', '.join(OPTIMIZERS)}")
    delta, tables, decayed, plain = [], [], [], []
    for name, parameter in model.named_parameters():
        if name.startswith("item_tokens.delta"):
            delta.append(parameter)
        elif kind != "adamw" and parameter.ndim and parameter.shape[0] == items:
            tables.append(parameter)
        elif parameter.ndim >= 2 and "embedding" not in name:
            decayed.append(parameter)
        else:
            plain.append(parameter)
    network = [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    if kind == "adamw":
        groups = [{"params": delta, "weight_decay": delta_weight_decay}, *network]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate)
    rows = [
        {"params": delta, "weight_decay": delta_weight_decay},
        {"params": tables, "weight_decay": 0.0},
    ]
    return Optimizers(
        [
            torch.optim.AdamW([g for g in network if g["params"]], lr=learning_rate),
            RowWiseAdagrad(
                [g for g in rows if g["params"]], lr=item_learning_rate or learning_rate
            ),
        ]
    )
