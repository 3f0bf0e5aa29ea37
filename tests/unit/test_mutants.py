"""Every mutant of the mutation gate still applies to the code as it is (its text occurs exactly
once) and names tests that exist: a refactoring that moves the code fails here, at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.mutation.mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]


def test_mutant_names_are_unique() -> None:
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_applies_once_and_names_real_tests(mutant: Mutant) -> None:
    assert (ROOT / mutant.path).read_text().count(mutant.old) == 1, mutant.path
    assert mutant.old != mutant.new and mutant.tests
    for node in mutant.tests:
        path, _, name = node.partition("::")
        func = re.sub(r"\[.*\]$", "", name)
        assert re.search(rf"^def {func}\(", (ROOT / path).read_text(), re.M), node
