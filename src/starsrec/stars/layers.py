"""The transformer block of STARS's sequence encoder (`starsrec.stars.model`, step 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from starsrec.stars.config import ModelConfig


class Block(nn.Module):
    """Pre-LN transformer block with causal scaled-dot-product attention."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        self.norm1 = nn.LayerNorm(config.dim)
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.out = nn.Linear(config.dim, config.dim)
        self.norm2 = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, 4 * config.dim),
            nn.GELU(),
            nn.Linear(4 * config.dim, config.dim),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D): self-attention where the bool `mask` (B, 1, T, T) is True, then
        the MLP, each pre-normed and residual."""
        batch, length, dim = x.shape  # (B, T, D)
        q, k, v = self.qkv(self.norm1(x)).split(dim, dim=-1)
        shape = (batch, length, self.heads, dim // self.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D/H)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, dim))
        return x + self.mlp(self.norm2(x))
