"""The mutation gate: each mutant of tests/mutation/mutants.py applied to a copy of the tree, its
paired tests run there against the real stack; the gate fails when a mutant survives.

Run by ``make test`` after the test suite (``python -m tests.mutation.gate``; ``--only NAME`` for
one mutant, ``--list`` to show them). Only the paired tests run per mutant, to keep the gate
inside the CI budget. A mutant is killed when its tests fail (pytest exit 1); an error (exit 2+:
the mutant does not even import, or a test could not be collected) is a broken gate, not a kill.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.mutation.mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(
    ".git", ".venv", ".stack", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
    "*.egg-info", "build", "dist", "kubevents-data",
)  # fmt: skip


def apply(mutant: Mutant, root: Path) -> None:
    path = root / mutant.path
    text = path.read_text()
    found = text.count(mutant.old)
    if found != 1:
        raise SystemExit(
            f"mutant {mutant.name}: its text occurs {found} times in {mutant.path} (expected 1):"
            " update tests/mutation/mutants.py to the code as it is now"
        )
    path.write_text(text.replace(mutant.old, mutant.new))


def run(mutant: Mutant) -> tuple[str, float, str]:
    """(verdict, seconds, pytest's tail) for one mutant."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        copy = Path(tmp) / "tree"
        shutil.copytree(ROOT, copy, ignore=SKIP)
        # The running stack's state (pid files, logs) stays where make stack put it.
        (copy / ".stack").symlink_to(ROOT / ".stack")
        apply(mutant, copy)
        env = {
            **os.environ,
            "PYTHONPATH": str(copy),
            "PYTHONDONTWRITEBYTECODE": "1",
            **dict(mutant.env),
        }
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    lines = (result.stdout + result.stderr).strip().splitlines()
    # Why it was killed: the first assertion lines (a kill for the wrong reason, say a crash at
    # start-up, shows here), else pytest's tail.
    why = [line for line in lines if line.startswith("E ")][:4]
    tail = "\n".join(why or lines[-15:])
    verdicts = {0: "SURVIVED", 1: "killed"}
    verdict = verdicts.get(result.returncode, f"ERROR (pytest {result.returncode})")
    return verdict, time.monotonic() - start, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    parser.add_argument(
        "--jobs",
        type=int,
        default=int(os.environ.get("KUBEVENTS_GATE_JOBS", "2")),
        help="mutants run at once (those marked alone always run one at a time, after)",
    )
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list or not mutants:
        for m in MUTANTS:
            print(f"{m.name}: {m.why}\n    " + "\n    ".join(m.tests))
        return 0 if mutants else 2
    results = []

    def one(mutant: Mutant) -> None:
        print(f"mutant {mutant.name} ...", flush=True)
        verdict, seconds, tail = run(mutant)
        results.append((mutant, verdict, seconds))
        print(f"mutant {mutant.name}: {verdict} in {seconds:.0f} s", flush=True)
        print("    " + tail.replace("\n", "\n    "), flush=True)

    # Each mutant has its own copy of the tree and its tests their own topics and groups, so
    # mutants run side by side; those whose tests disturb a shared server run alone, after.
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(one, [m for m in mutants if not m.alone]))
    for mutant in (m for m in mutants if m.alone):
        one(mutant)
    print("\nmutation gate")
    print(f"{'mutant':34} {'result':20} {'time':>6}  tests")
    for mutant, verdict, seconds in results:
        print(f"{mutant.name:34} {verdict:20} {seconds:5.0f}s  {', '.join(mutant.tests)}")
    survivors = [m.name for m, v, _ in results if v != "killed"]
    if survivors:
        print(f"mutation gate FAILED: {', '.join(survivors)} not killed by their tests")
        return 1
    print(f"mutation gate passed: {len(results)} mutants killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
