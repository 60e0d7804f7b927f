"""Training-free merging of the original LLM back into a LLaVA model's language model.

`merge_models(config)` writes one merged LLaVA folder; `sweep_merge(config)` merges and
evaluates a grid of (alpha, density) points and picks the best; `run_merge(config)` does
whichever the config asks for, and `merge_config(path, options, overrides)` builds that config
the way `mlan merge` does. The tensor maths lives in `methods`, the checkpoint layouts in
`layout`, the streaming writer in `streaming`.
"""

from mlan.merge.run import merge_config, run_merge
from mlan.merge.streaming import MergeResult, merge_models
from mlan.merge.sweep import SweepReport, sweep_merge

__all__ = ["MergeResult", "SweepReport", "merge_config", "merge_models", "run_merge", "sweep_merge"]
