"""app/testing/faults.py: fault points do nothing unless armed, fire where the spec says (after
N records, once for exit/hang, every time for delay), and count what fired."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import pytest

from app.testing import faults


@pytest.fixture(autouse=True)
def disarm() -> Iterator[None]:
    yield
    faults.configure("")


def hits(point: str) -> float:
    value: float = faults.HITS.labels(point)._value.get()  # _value: Any to mypy
    return value


def test_unarmed_points_do_nothing() -> None:
    faults.configure("")
    before = hits("t.none")
    faults.hit("t.none", 10)
    asyncio.run(faults.point("t.none", 10))
    assert hits("t.none") == before


def test_a_malformed_spec_is_a_clear_error() -> None:
    for spec in ("x", "x=boom", "x=delay", "x=exit:3"):
        with pytest.raises(ValueError, match=re.escape("expected POINT=exit|hang|delay")):
            faults.parse(spec)


def test_hang_fires_once_after_the_given_records_and_waits_for_its_condition() -> None:
    faults.configure("t.hang=hang@100")
    before = hits("t.hang")
    released = False
    faults.hit("t.hang", 60)  # 0 records before: not armed
    faults.hit("t.hang", 40)  # 60 before: not armed
    assert hits("t.hang") == before

    async def release_soon() -> None:
        nonlocal released
        await asyncio.sleep(0.2)
        released = True

    async def run() -> float:
        start = time.monotonic()
        task = asyncio.ensure_future(release_soon())
        await faults.point("t.hang", 1, until=lambda: released)  # 100 before: fires, waits
        await task
        return time.monotonic() - start

    assert asyncio.run(run()) >= 0.2
    assert hits("t.hang") == before + 1
    faults.hit("t.hang", 1)  # fired once already: passes at once
    assert hits("t.hang") == before + 1


def test_delays_fire_every_time_and_several_faults_share_a_point() -> None:
    faults.configure("t.slow=delay:0.05,t.slow=delay:0.05@2")
    before = hits("t.slow")
    start = time.monotonic()
    for _ in range(3):
        faults.hit("t.slow")
    elapsed = time.monotonic() - start
    assert hits("t.slow") == before + 4  # 3 of the first, 1 of the second (armed after 2)
    assert elapsed >= 0.2
