"""Check that every package installed in this environment (but mlan) is pinned in the lock, at that version.

Usage: python scripts/lockcheck.py scripts/lock.txt        (exit 1 and one line per mismatch)
       python scripts/lockcheck.py --write scripts/lock.txt  (rewrite the pins from this environment)

Standard library only, so it runs in any fresh venv.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distributions
from pathlib import Path


def canonicalize_name(name: str) -> str:
    """PEP 503 normalised name (what pip compares)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    pins = {}
    for dist in distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in ("mlan", "pip", "setuptools", "wheel"):
            continue
        # The CPU wheel's local label (+cpu) is not part of the pin: ==2.13.0 matches it.
        pins[name] = dist.version.split("+")[0]
    return pins


def read_lock(path: Path) -> tuple[list[str], dict[str, str]]:
    header, pins = [], {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            if not pins:
                header.append(line)
            continue
        name, _, version = line.partition("==")
        pins[canonicalize_name(name)] = version.strip()
    return header, pins


def main(argv: list[str]) -> int:
    write = argv[:1] == ["--write"]
    path = Path(argv[-1])
    header, pins = read_lock(path)
    have = installed()
    if write:
        lines = [*header, *(f"{n}=={v}" for n, v in sorted(have.items()))]
        path.write_text("\n".join(lines) + "\n")
        print(f"{path}: {len(have)} pins written")
        return 0
    bad = [f"{n}=={v} is installed but the lock has {pins[n]}" for n, v in have.items() if n in pins and pins[n] != v]
    bad += [f"{n}=={v} is installed but not in the lock" for n, v in have.items() if n not in pins]
    for line in sorted(bad):
        print(f"{path}: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
