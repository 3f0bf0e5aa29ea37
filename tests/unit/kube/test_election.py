"""LeaseElector.leading(): the right to publish lapses with the lease on our own clock, even when
the elector's thread has not run since (a frozen process); and the producer's check drops a batch
only once its sources were stopped."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from app.kube.client import ApiError
from app.kube.election import LeaseElector


class FakeLeases:
    """The Lease API of one namespace, as the elector uses it (GET, POST, PUT with versions)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def get_json(self, path: str, query: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.lease is None:
            raise ApiError(404, "Not Found", "", path)
        return {**self.lease, "metadata": {"resourceVersion": str(self.version)}}

    def send_json(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if method == "PUT" and body["metadata"].get("resourceVersion") != str(self.version):
            raise ApiError(409, "Conflict", "", path)
        self.version += 1
        self.lease = {"spec": dict(body["spec"])}
        return body


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def elector(leases: FakeLeases, clock: Clock, identity: str) -> LeaseElector:
    return LeaseElector(
        leases,  # type: ignore[arg-type]
        namespace="default",
        name="l",
        identity=identity,
        lease_duration_s=4,
        renew_period_s=1,
        on_started=lambda: None,
        on_stopped=lambda: None,
        clock=clock,
    )


def leads(e: LeaseElector) -> bool:
    """``e.is_leader`` read anew: mypy would keep it narrowed by an earlier assert across the
    ``e.run()`` that changed it."""
    return e.is_leader


class _OneShot(threading.Event):
    """A stop event that lets exactly one round run."""

    def __init__(self) -> None:
        super().__init__()
        self._checks = 0

    def is_set(self) -> bool:
        self._checks += 1
        return self._checks > 1

    def wait(self, timeout: float | None = None) -> bool:
        return True


def test_leading_lapses_with_the_lease_before_anyone_can_take_over() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    a.run(_OneShot())
    assert a.is_leader and a.leading()
    b.run(_OneShot())  # b sees a's renewal now
    assert not b.is_leader
    clock.now += 4 * 0.8 + 0.01  # a frozen: its thread did not run, its clock did
    assert a.is_leader, "a's elector has not run: it still believes it leads"
    assert not a.leading(), "but it may no longer publish"
    b.run(_OneShot())
    assert not b.is_leader, "b cannot take over before a whole lease"
    clock.now += 0.8
    b.run(_OneShot())
    assert leads(b) and b.leading()
    a.run(_OneShot())  # a's late elector: sees b, steps down
    assert not leads(a) and not a.leading()


def test_renewal_keeps_leading() -> None:
    leases, clock = FakeLeases(), Clock()
    a = elector(leases, clock, "a")
    for _ in range(10):
        a.run(_OneShot())
        assert a.leading()
        clock.now += 1
    assert a.is_leader


def test_producer_check_waits_while_in_doubt_and_drops_once_stopped() -> None:
    from app.producer.service import Producer

    async def scenario() -> None:
        producer = Producer.__new__(Producer)
        valid = [False]
        producer.leading = lambda: valid[0]
        stop = threading.Event()
        waiting = asyncio.ensure_future(producer._allowed(stop, 3))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "a late renewal: wait, do not drop"
        valid[0] = True
        assert await waiting is True
        valid[0] = False
        stop.set()
        assert await producer._allowed(stop, 3) is False, "stepped down: drop"

    asyncio.run(scenario())
