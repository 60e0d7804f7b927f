"""Evaluation: the eight-task language suite through lm-eval, MLAN's unseen language and vision
suites through our generate-then-match harness, results, comparisons and charts.

Public API:
- `run_evaluation(EvalRun, *, models=None, suites=None, progress=None) -> EvalReport`
- `EvalRun`: the run config (models, suites, tasks, limit, data, out, reference, ...), what
  `mlan eval` flags and `mlan eval run.yaml` both build
- `load_suite(name_or_path) -> EvalSuite`
"""

from mlan.evaluate.report import EvalReport, ModelResults, TaskResult
from mlan.evaluate.run import DEFAULT_SUITE, UNSEEN_SUITES, EvalRun, load_suite, run_evaluation

__all__ = [
    "DEFAULT_SUITE",
    "UNSEEN_SUITES",
    "EvalReport",
    "EvalRun",
    "ModelResults",
    "TaskResult",
    "load_suite",
    "run_evaluation",
]
