"""Validation of every shipped YAML file against the config model of its kind."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from mlan.config.base import load_config
from mlan.config.merge import MergeConfig
from mlan.config.mixture import MixtureSpec
from mlan.config.recipe import SFTRecipe
from mlan.config.suite import EvalSuite
from mlan.paths import shipped_files


def kind_models() -> dict[str, type[BaseModel]]:
    """The config model of each shipped folder."""
    return {"data_mixtures": MixtureSpec, "recipes": SFTRecipe, "evaluations": EvalSuite, "merges": MergeConfig}


def validate_shipped() -> dict[Path, BaseModel]:
    """Load every shipped recipe, mixture spec and evaluation suite; the first error raises."""
    models = kind_models()
    loaded: dict[Path, BaseModel] = {}
    for kind in ("data_mixtures", "recipes", "evaluations"):
        for f in shipped_files(kind):
            loaded[f] = load_config(f, models[kind])
    return loaded
