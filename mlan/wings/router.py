"""The Wings router: per-token weights of the visual and textual learners from the main attention.

Weights (w_v, w_t) = softmax(SiLU(linear(features))). Two feature forms:

- `attention` (the paper's, and the default): the main branch's attention probabilities summed over
  heads and pooled by key position into a fixed-size vector, as Wings' `ReweightLinear`
  (AIDC-AI/Wings@5dec325:wings/model/base_module.py:81-98, fed the probabilities of an eager main
  attention at wings/model/modeling_wings_llama.py:141-151 and :185). Needs the probabilities, so
  eager attention. Deliberately not as there: keys are placed by rotary position, not by slot, so
  left padding does not shift them, and positions past `router_max_positions` share the last slot
  (Wings' weight slice would fail past its 4096 inputs).
- `modality`: per head, the main branch's attention mass on image keys and on text keys. With
  eager attention it is read off the probabilities; with any other kernel it is computed by one
  extra `scaled_dot_product_attention` call whose values are the 0/1 image-key indicator: its
  output is exactly the attention mass on image keys, without materialising the probabilities.

A row without image tokens switches the visual learner off (w_v = 0, w_t = 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Router(nn.Module):
    """Linear -> SiLU -> softmax over (visual, textual)."""

    def __init__(self, in_features: int, init_std: float = 0.02):
        super().__init__()
        self.proj = nn.Linear(in_features, 2)
        # Not as Wings: its ReweightLinear keeps nn.Linear's default init (weight and bias uniform in
        # +-1/sqrt(in_features); base_module.py:81-84). Here, as WingsConfig.init_std documents ("the
        # down projections and the routers"): weight ~ normal(0, init_std) cut at +-2 std, bias 0, so no
        # random bias favours one learner before training. That matters most for the `modality` form
        # (mlan's; 2 * heads inputs, e.g. 64, where the default bias would reach +-1/8); for the paper's
        # `attention` form (4096 inputs) the default bias is within +-1/64.
        nn.init.trunc_normal_(self.proj.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
        """Weights (B, L, 2) = (w_v, w_t) per token; `has_image` (B,) False forces (0, 1)."""
        return self.weights(self.proj(features), has_image)

    def forward_positions(
        self, probs: torch.Tensor, key_positions: torch.Tensor, has_image: torch.Tensor
    ) -> torch.Tensor:
        """The paper's router: `forward(position_features(probs, key_positions, in_features))`, computed
        without materialising the (B, L, in_features) features: linear(scatter(p)) = p @ W[:, position]^T + b."""
        size = self.proj.in_features
        columns = self.proj.weight.t()[key_positions.clamp(0, size - 1)]  # (B, S, 2)
        linear = probs.sum(1) @ columns.to(probs.dtype) + self.proj.bias.to(probs.dtype)
        return self.weights(linear, has_image)

    @staticmethod
    def weights(linear: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
        """softmax(SiLU(linear)) over (visual, textual), the visual one off for rows without images."""
        logits = F.silu(linear).float()
        visual = logits[..., 0].masked_fill(~has_image[:, None], float("-inf"))
        weights = torch.softmax(torch.stack((visual, logits[..., 1]), dim=-1), dim=-1)
        return weights.to(linear.dtype)


def modality_features_from_probs(probs: torch.Tensor, image_keys: torch.Tensor) -> torch.Tensor:
    """(B, L, 2*heads): per head, attention mass on image keys then on text keys, from eager probabilities.

    `probs` (B, heads, L, S) are the main branch's attention probabilities; `image_keys` (B, S) marks image keys.
    """
    image = (probs * image_keys[:, None, None, :].to(probs.dtype)).sum(-1)
    return _mass_features(image, probs.sum(-1))


def modality_features_sdpa(
    query: torch.Tensor, key: torch.Tensor, image_keys: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """(B, L, 2*heads) like `modality_features_from_probs`, from the main branch's rotated queries and keys.

    query (B, heads, L, d), key (B, kv_heads, S, d), mask (B, 1, L, S) additive, as in the main attention.
    """
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads != heads:
        key = key.repeat_interleave(heads // kv_heads, dim=1)
    b, s = image_keys.shape
    # The indicator sits in the first value channel; the other channels are zero padding so that
    # value and query have the same width, which the fused (flash / memory-efficient) kernels need.
    values = query.new_zeros(b, 1, s, query.shape[-1])
    values[:, 0, :, 0] = image_keys.to(query.dtype)
    values = values.expand(b, heads, s, query.shape[-1])
    image = F.scaled_dot_product_attention(query, key, values, attn_mask=mask, scale=scale)[..., 0]
    return _mass_features(image, torch.ones_like(image))


def _mass_features(image: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    # Text mass is the rest of the row's mass (pad keys get none): both halves are given so that
    # the linear layer sees the two quantities the method is about.
    return torch.cat((image, total - image), dim=1).transpose(1, 2)


def position_features(probs: torch.Tensor, key_positions: torch.Tensor, size: int) -> torch.Tensor:
    """(B, L, size): the paper's features, attention probabilities summed over heads, by key position.

    Spelled out for reference and tests; `Router.forward_positions` computes the same routing
    without this (B, L, size) tensor, which at 2k tokens x 4096 slots would cost GBs per batch.

    Keys are placed by their rotary position (not their slot in a padded batch, so left padding
    does not shift them); positions at or beyond `size` share the last slot.
    """
    summed = probs.sum(1)  # (B, L, S)
    b, n, s = summed.shape
    index = key_positions.clamp(0, size - 1)[:, None, :].expand(b, n, s)
    return summed.new_zeros(b, n, size).scatter_add_(-1, index, summed)
