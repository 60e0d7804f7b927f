"""LoRRA (Low-Rank Residual Attention): one Wings learner of one decoder layer.

Q = H + H A_q B_q, K = X + X A_k B_k, V = X + X A_v B_v, O = softmax(Q K^T / sqrt(d_head)) V A_o B_o.
The residual identity terms let the learner attend with the raw hidden states from the start;
the output projection is purely low-rank and B_o starts at zero, so a new learner adds exactly 0.

Why hand-written: this is a cross-attention branch with its own keys and values, not a
reparametrisation of one existing nn.Linear, so PEFT's LoRA cannot express it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of `x` (B, heads, N, d_head) with cos/sin (B or 1, N, d_head) from the model's rotary module.

    Same formula as Llama's `apply_rotary_pos_emb` (rotate-half convention), written out because
    transformers' helper rotates a query and a key together at the same positions, and a learner's
    keys sit at other positions than its queries.
    """
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LoRRA(nn.Module):
    """A low-rank residual cross-attention learner (multi-head, rotary positions)."""

    def __init__(self, hidden: int, heads: int, head_dim: int, rank: int, init_std: float = 0.02):
        super().__init__()
        self.hidden, self.heads, self.head_dim, self.rank = hidden, heads, head_dim, rank
        self.init_std = init_std
        for name in ("q", "k", "v", "o"):
            setattr(self, f"{name}_a", nn.Parameter(torch.empty(hidden, rank)))
            setattr(self, f"{name}_b", nn.Parameter(torch.empty(rank, hidden)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A ~ normal(0, std), B = 0: the learner's output starts at exactly zero.

        As Wings (AIDC-AI/Wings@5dec325:wings/model/base_module.py:150-153, `trunc_normal_(std=.02)`):
        torch's `trunc_normal_` cuts at its defaults a=-2, b=2, absolute values, i.e. at 100 std for
        std 0.02, so A is in effect untruncated normal. The same call here, cut where Wings cuts it."""
        std = self.init_std
        for name in ("q", "k", "v", "o"):
            nn.init.trunc_normal_(getattr(self, f"{name}_a"), std=std)
            nn.init.zeros_(getattr(self, f"{name}_b"))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (rotated at the positions of the tokens they came from) and values, each (B, heads, N, d_head).

        Through the module's own call (`forward` without keys): DeepSpeed ZeRO-3 and FSDP gather a module's
        weights only around its calls, and a method reading `k_a` directly would see an empty shard."""
        return self(x, cos, sin)

    def _keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = x + (x @ self.k_a) @ self.k_b
        v = x + (x @ self.v_a) @ self.v_b
        return rotate(self._heads(k), cos, sin), self._heads(v)

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Learner output (B, L, hidden) for queries `h` at the positions of cos/sin; without `keys`, the keys and
        values of the tokens `h` instead (`keys_values`).

        `mask` (B, 1, L or 1, N) is additive (0 where a query may see a key, -inf elsewhere); every row sees at least one key
        (rows without any visible key are marked by `keep` = 0 and zeroed, which avoids NaNs).
        """
        if keys is None:
            return self._keys_values(h, cos, sin)
        b, n, _ = h.shape
        q = rotate(self._heads(h + (h @ self.q_a) @ self.q_b), cos, sin)
        o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        o = (o * keep).transpose(1, 2).reshape(b, n, self.hidden)
        return (o @ self.o_a) @ self.o_b
