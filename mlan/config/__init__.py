"""Typed configs: one pydantic model per YAML kind, each in its own module.

- `mlan.config.mixture.MixtureSpec`  (data_mixtures/*.yaml)
- `mlan.config.recipe.SFTRecipe`     (recipes/*.yaml)
- `mlan.config.suite.EvalSuite`      (evaluations/*.yaml)
- `mlan.config.merge.MergeConfig`    (merge YAML)
"""

from mlan.config.base import StrictModel, apply_overrides, dump_config, load_config, read_yaml, validate_config

__all__ = ["StrictModel", "apply_overrides", "dump_config", "load_config", "read_yaml", "validate_config"]
