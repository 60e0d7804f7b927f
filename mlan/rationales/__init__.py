"""MLAN's teacher step: a rationale for every row of a mixture spec, from a teacher shown the gold answer.

- `generate_rationales(spec)` (mlan.rationales.run): draws the spec's rows as `mlan build-mixture` does,
  prompts the teacher as MLAN's authors did (mlan.rationales.prompts), cleans and labels each output
  (mlan.rationales.clean) and appends it to the spec's store (mlan.rationales.store);
- a spec with `targets: rationale` then builds MLAN's rows from the store (mlan.data.fill).
"""

from mlan.rationales.run import RationaleResult, generate_rationales

__all__ = ["RationaleResult", "generate_rationales"]
