"""Mutation testing of the modules whose silent bugs would corrupt results (`make mutate`, docs/mutation.md).

Runs mutmut over the modules of pyproject's `[tool.mutmut] only_mutate` (narrowed to some functions of a
module by FUNCTIONS below), then prints the killed share per module and writes it, with the surviving
mutants, to mutants/summary.txt. Every run tests every mutant again (no result is reused).

Usage: python scripts/mutate.py [--max-children N]   (then `mutmut show NAME` shows one mutant's diff)
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Modules mutated only in some functions: the rest of the module is not under test here. (`apportion` moved to
# mlan/config/mixture.py, which is not in only_mutate; tests/test_architecture.py keeps this, pyproject and
# docs/mutation.md in step.)
FUNCTIONS = {"mlan/data/mixture.py": ["plan_counts"], "mlan/io.py": ["diff_paths"]}

# mutmut's exit codes (mutmut.stats.status_by_exit_code) by verdict.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 37: "type check"}
STATUS |= dict.fromkeys((24, -24, 36, 152, 255), "timeout")


def status(code: int | None) -> str:
    return "not checked" if code is None else STATUS.get(code, "suspicious")


def modules() -> list[str]:
    """pyproject's `[tool.mutmut] only_mutate`, read as mutmut reads it."""
    from mutmut.configuration import config

    os.chdir(ROOT)
    return config().only_mutate


def patterns(path: str) -> list[str]:
    """mutmut's names of the mutants of one module: `mlan.data.mixture.x_plan_counts__mutmut_3`,
    `mlan.train.sampler.xǁClassǁmethod__mutmut_1` for methods."""
    dotted = path.removesuffix(".py").replace("/", ".")
    functions = FUNCTIONS.get(path)
    if functions is None:
        return [f"{dotted}.*"]
    return [f"{dotted}.x_{f}__mutmut_*" for f in functions]


def report(paths: list[str]) -> str:
    lines = [f"mutmut over {len(paths)} modules, {date.today().isoformat()}: killed / total (timeouts count as killed)"]
    survivors = []
    for path in paths:
        meta = json.loads((ROOT / "mutants" / f"{path}.meta").read_text())["exit_code_by_key"]
        mine = {k: v for k, v in meta.items() if any(fnmatch.fnmatch(k, p) for p in patterns(path))}
        verdicts = Counter(status(code) for code in mine.values())
        killed = verdicts["killed"] + verdicts["timeout"]
        share = 100 * killed / len(mine) if mine else 0.0
        other = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()) if v not in ("killed", "timeout"))
        lines.append(f"  {path:34s} {killed:4d} / {len(mine):4d}  {share:5.1f}%  {other}")
        survivors += sorted(f"{k}  ({status(v)})" for k, v in mine.items() if status(v) not in ("killed", "timeout"))
    lines += ["", f"not killed ({len(survivors)}; `mutmut show NAME` for the diff):", *survivors]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--report-only", action="store_true", help="summarise the last run, run nothing")
    args = parser.parse_args(argv)
    paths = modules()
    if not args.report_only:
        names = [p for path in paths for p in patterns(path)]
        mutmut = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children), *names]
        # One torch thread per mutant: the workers are forked, and they already share the cores.
        env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        subprocess.run(mutmut, cwd=ROOT, env=env, check=True)
    text = report(paths)
    (ROOT / "mutants" / "summary.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
