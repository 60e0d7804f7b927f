"""One decoder layer's Wings modules (`WingsLayer`) and what the Wings layers of one forward share
(`ForwardContext`, with each learner's keys and the learners' KV-cache memory).

`mlan.wings.runtime` builds these in its hooks; `mlan.wings.mixing` reads them to add the learners'
outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mlan.config.wings import WingsConfig
from mlan.wings.lorra import LoRRA
from mlan.wings.router import Router


class WingsLayer(nn.Module):
    """The visual learner, textual learner and router of one decoder layer."""

    def __init__(self, hidden: int, heads: int, head_dim: int, main_heads: int, config: WingsConfig):
        super().__init__()
        self.visual = LoRRA(hidden, heads, head_dim, config.rank, config.init_std)
        self.textual = LoRRA(hidden, heads, head_dim, config.rank, config.init_std)
        features = 2 * main_heads if config.router == "modality" else config.router_max_positions
        self.router = Router(features, config.init_std)


@dataclass
class LearnerKeys:
    """One learner's keys for the current forward: the new tokens' inputs plus the visibility mask."""

    x: torch.Tensor  # (B, n_new, d) key/value inputs of the new tokens
    cos: torch.Tensor  # rotary cos/sin at the new keys' positions
    sin: torch.Tensor
    mask: torch.Tensor  # (B, 1, L or 1, n_past + n_new) additive: 0 where visible, -inf elsewhere
    keep: torch.Tensor  # (B, 1, L or 1, 1): 0 where a query sees no key at all


@dataclass
class CacheState:
    """What the learners remember across forwards that share one `past_key_values`."""

    length: int = 0
    image: torch.Tensor | None = None  # (B, S) per slot: image token
    valid: torch.Tensor | None = None  # (B, S) per slot: not padding
    positions: torch.Tensor | None = None  # (B, S) per slot: rotary position
    keys_meta: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # learner -> (valid, slot)
    kv: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    main_keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> main branch's rotated keys


@dataclass
class ForwardContext:
    """Everything the Wings layers of one forward share (built once, by the first of them)."""

    past: int
    positions: torch.Tensor  # (B, L) rotary positions of the new tokens
    cos: torch.Tensor  # rotary cos/sin of the new tokens (the queries), from the model's own rotary module
    sin: torch.Tensor
    query_slots: torch.Tensor  # (L,)
    has_image: torch.Tensor  # (B,)
    any_image: bool
    image_all: torch.Tensor  # (B, S) image keys of the main attention (past + new)
    positions_all: torch.Tensor  # (B, S)
    main_mask: torch.Tensor | None  # (B, 1, L, S) additive: what the main attention lets each query see
    keys: dict[str, LearnerKeys | None]
    state: CacheState | None
