"""Training-free merging of the original LLM back into a LLaVA model's language model.

`merge_models(config)` writes one merged LLaVA folder; `sweep_merge(config)` merges and
evaluates a grid of (alpha, density) points and picks the best. The tensor maths lives in
`methods`, the checkpoint layouts in `layout`, the streaming writer in `streaming`.
"""

from mlan.merge.streaming import MergeResult, merge_models

__all__ = ["MergeResult", "merge_models"]
