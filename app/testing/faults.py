"""Named fault points: where the integration and fault tests make a process die, hang or slow down.

A fault point is one call on a production path, ``faults.hit("core.before-publish", n)`` (or
``await faults.point(...)`` on the event loop), that does nothing unless the process was started
with ``KUBEVENTS_FAULTS`` naming it. Each process configures it once from its settings
(``faults.configure(settings.faults)``). The spec is a comma-separated list of
``POINT=ACTION[@AFTER]``:

- ``exit``: die at once with status 137, as ``kill -9`` would (nothing flushed, nothing released);
- ``hang``: stop this path here (the rest of the process goes on: heartbeats, offset commits,
  HTTP), until the caller's ``until`` condition holds, or forever;
- ``delay:SECONDS``: sleep that long, every time.

``@AFTER`` arms the point only once ``AFTER`` records (the ``n`` of each call) have passed it
before, so that a test lands a fault at a measured place in a stream (for example after the first
offset commit). ``exit`` and ``hang`` fire once; ``delay`` fires on every call once armed.
Every firing is counted in ``kubevents_fault_hits_total{point}``: a test asserts that its fault
really landed instead of trusting a sleep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

log = logging.getLogger("kubevents.faults")

HITS = Counter("kubevents_fault_hits_total", "Test fault points fired.", ["point"])


@dataclass
class _Fault:
    action: str  # exit | hang | delay
    after: int = 0
    seconds: float = 0.0
    passed: int = 0  # records that went past the point so far
    fired: bool = False

    def fires(self, n: int) -> bool:
        armed = self.passed >= self.after
        self.passed += n
        if not armed or (self.fired and self.action != "delay"):
            return False
        self.fired = True
        return True


_faults: dict[str, list[_Fault]] = {}


def parse(spec: str) -> dict[str, list[_Fault]]:
    """``POINT=ACTION[@AFTER],...`` -> faults by point; a ValueError names a malformed entry."""
    out: dict[str, list[_Fault]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        point, sep, rest = entry.partition("=")
        action, _, after = rest.partition("@")
        kind, _, arg = action.partition(":")
        if not sep or kind not in ("exit", "hang", "delay") or (kind == "delay") != bool(arg):
            raise ValueError(
                f"bad fault {entry!r}: expected POINT=exit|hang|delay:SECONDS[@AFTER_RECORDS]"
            )
        out.setdefault(point.strip(), []).append(_Fault(kind, int(after or 0), float(arg or 0)))
    return out


def configure(spec: str) -> None:
    """Arm the fault points of ``spec`` (empty: none) for this process."""
    _faults.clear()
    _faults.update(parse(spec))
    if _faults:
        log.warning("test fault points armed: %s", spec)


def _fire(point: str, n: int) -> list[_Fault]:
    fired = [fault for fault in _faults.get(point, ()) if fault.fires(n)]
    for fault in fired:
        HITS.labels(point).inc()
        log.warning("fault point %s fired: %s", point, fault.action)
        if fault.action == "exit":
            logging.shutdown()
            os._exit(137)
    return fired


def hit(point: str, n: int = 1, until: Callable[[], bool] | None = None) -> None:
    """A fault point in blocking code (a thread): ``n`` records are going past it."""
    if not _faults:
        return
    for fault in _fire(point, n):
        if fault.action == "delay":
            time.sleep(fault.seconds)
            continue
        while until is None or not until():  # hang
            time.sleep(0.05)


async def point(point: str, n: int = 1, until: Callable[[], bool] | None = None) -> None:
    """A fault point on the event loop: ``n`` records are going past it."""
    if not _faults:
        return
    for fault in _fire(point, n):
        if fault.action == "delay":
            await asyncio.sleep(fault.seconds)
            continue
        if until is None:
            await asyncio.Event().wait()  # hang: this path never goes on
            continue
        # A condition on another component's state (no event to await): polled.
        while not until():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
