"""`IndexConfig`: how an `ItemIndex` chooses, sizes and searches its index."""

from __future__ import annotations

from dataclasses import dataclass

SPACES = ("l2", "ip")


@dataclass(frozen=True)
class IndexConfig:
    """How `ItemIndex.build` chooses and sizes its index (the rule: `starsrec.index.sweep`),
    and how search runs.

    factories are faiss.index_factory strings (IVF... or HNSW..., ",RFlat" at the end for
    exact re-ranking; `{nlist}` and `{dim}` filled in), each tried in each of `spaces`: "l2"
    (after the MIPS-to-L2 transform) and "ip" (inner product directly); see
    `starsrec.index.ann`. max_build_s caps a factory's projected full build: HNSW took 176 s
    on 1M rows here. threads: faiss threads at search, one per serving worker (2 threads made
    single-query search 2.3x slower in our measurements).
    """

    exact_threshold: int = 50_000
    factories: tuple[str, ...] = ("IVF1,PQ{dim}x4fs,RFlat", "IVF{nlist},Flat")
    spaces: tuple[str, ...] = ("ip", "l2")
    target_recall: float = 0.995
    sweep_rows: int = 100_000
    sweep_queries: int = 500
    exact_subset_rows: int = 150_000
    threads: int = 1
    seed: int = 0
    max_build_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.factories:
            raise ValueError("IndexConfig.factories is empty: give at least one factory string")
        if not self.spaces or not set(self.spaces) <= set(SPACES):
            raise ValueError(f"IndexConfig.spaces must be some of {SPACES}, got {self.spaces}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if min(self.sweep_rows, self.sweep_queries, self.threads) < 1:
            raise ValueError("sweep_rows, sweep_queries and threads must all be >= 1")
