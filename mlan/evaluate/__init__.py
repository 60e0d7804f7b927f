"""Evaluation: the eight-task language suite through lm-eval, MLAN's unseen language and vision
suites through our generate-then-match harness, results, comparisons and charts.

Public API:
- `run_evaluation(models, suites, *, tasks=None, limit=None, data_dir=None, data_files=None,
  image_dir=None, out_dir=None, reference=None, batch_size=8, device=None, dtype="auto",
  fresh=False, progress=None) -> EvalReport`
- `load_suite(name_or_path) -> EvalSuite`
"""

from mlan.evaluate.report import EvalReport, ModelResults, TaskResult
from mlan.evaluate.run import DEFAULT_SUITE, UNSEEN_SUITES, load_suite, run_evaluation

__all__ = ["DEFAULT_SUITE", "UNSEEN_SUITES", "EvalReport", "ModelResults", "TaskResult", "load_suite", "run_evaluation"]
