"""The README's examples run: its CLI lines parse, its replay example and `make demo`'s script work
against the real stack."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from app.cli import build_parser
from tests.integration.conftest import ROOT, consume, json_values

README = (ROOT / "README.md").read_text()


def readme_commands(program: str) -> list[list[str]]:
    blocks = re.findall(r"```console\n(.*?)```", README, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith(program + " ")]


def test_every_kubevents_command_in_the_readme_is_accepted() -> None:
    commands = readme_commands("kubevents")
    assert len(commands) >= 6
    for args in commands:
        build_parser().parse_args(args)  # SystemExit (a failure) if the CLI rejects it


def test_readme_replay_example_publishes_the_dump(brokers: str, names: dict[str, str]) -> None:
    args = next(a for a in readme_commands("kubevents") if a[0] == "replay")
    env = {k: v for k, v in names.items() if k.startswith("KUBEVENTS_")}
    import os

    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"published 3 events to {names['KUBEVENTS_TOPICS_RAW']}" in result.stdout
    records = json_values(consume(brokers, names["KUBEVENTS_TOPICS_RAW"], until=3))
    assert {r["via"] for r in records} == {"replay"} and len(records) == 3


def test_make_demo_shows_the_whole_job() -> None:
    """`make demo` = make venv stack + scripts/demo.py (the stack is already up here)."""
    assert "scripts/demo.py" in (ROOT / "Makefile").read_text()
    result = subprocess.run(
        [sys.executable, str(Path("scripts/demo.py"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "enriched events on topic" in out
    assert "Deployment/shop-web" in out, "owner chain resolved to the Deployment"
    assert "FailedScheduling" in out and "top reasons over the last hour" in out
