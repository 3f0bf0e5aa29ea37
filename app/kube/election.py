"""Leader election on a coordination.k8s.io/v1 Lease, so that two producer replicas publish once.

The same algorithm as client-go's leaderelection: a candidate takes the Lease when it is free or
its holder has not renewed it for ``lease_duration`` as observed on our own clock (no clock-skew
trust), writes with the Lease's resourceVersion (optimistic concurrency: two candidates cannot
both win), and the holder renews every ``renew_period``. A holder that cannot renew within
``lease_duration`` steps down before anyone else may take over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Gauge

from app.kube.client import ApiError, KubeClient
from app.model.timeutil import format_time
from app.testing import faults

log = logging.getLogger("kubevents.election")

LEADER = Gauge("kubevents_producer_leader", "1 while this replica holds the Lease.")

# A holder publishes, and keeps leading, only while its last renewal started less than this part
# of the lease ago: the rest is the margin for clock rates and the other replica's polling.
LEADING_FRACTION = 0.8


class LeaseElector:
    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: float,
        renew_period_s: float,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name, self.namespace, self.identity = name, namespace, identity
        self.duration, self.period = lease_duration_s, renew_period_s
        self.on_started, self.on_stopped, self.clock = on_started, on_stopped, clock
        self.is_leader = False
        self.holder: str | None = None
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        # When the last successful round *started*: the API server wrote our renewTime after
        # that, so no other replica can count the lease from an earlier instant.
        self._renewed_from = 0.0

    def _spec(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = format_time(datetime.now(UTC))
        spec = dict(previous or {})
        transitions = int(spec.get("leaseTransitions") or 0)
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            transitions += 1 if previous else 0
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, round(self.duration)),
            renewTime=now,
            leaseTransitions=transitions,
        )
        return spec

    def try_acquire_or_renew(self) -> bool:
        """One round; True if we hold the Lease afterwards."""
        try:
            lease = self.client.get_json(self.path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(None),
            }
            try:
                self.client.send_json("POST", self.collection, body)
            except ApiError as exc2:
                if exc2.status == 409:  # somebody created it first
                    return False
                raise
            self.holder = self.identity
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        observed = (holder, str(spec.get("renewTime") or ""))
        if observed != self._observed:
            self._observed, self._observed_at = observed, self.clock()
        self.holder = holder or None
        free = not holder or self.clock() - self._observed_at > float(
            spec.get("leaseDurationSeconds") or self.duration
        )
        if holder != self.identity and not free:
            return False
        lease["spec"] = self._spec(spec)
        try:
            self.client.send_json("PUT", self.path, lease)
        except ApiError as exc:
            if exc.status == 409:  # lost the race for this version
                return False
            raise
        self.holder = self.identity
        return True

    def leading(self) -> bool:
        """May this replica publish now? Leader, and the lease renewed recently enough that no
        other replica can have taken it over, even if our own thread has not noticed yet."""
        return (
            self.is_leader and self.clock() - self._renewed_from < self.duration * LEADING_FRACTION
        )

    def release(self) -> None:
        """Give the Lease up on shutdown so the other replica takes over at once."""
        if not self.is_leader:
            return
        try:
            lease = self.client.get_json(self.path)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                self.client.send_json("PUT", self.path, lease)
        except (ApiError, ConnectionError) as exc:
            log.warning("could not release the Lease: %s", exc)
        self._set_leader(False)

    def _set_leader(self, value: bool) -> None:
        if value == self.is_leader:
            return
        self.is_leader = value
        LEADER.set(1 if value else 0)
        if value:
            log.info("became leader", extra={"lease": f"{self.namespace}/{self.name}"})
            self.on_started()
        else:
            log.info("stopped leading", extra={"lease": f"{self.namespace}/{self.name}"})
            self.on_stopped()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            faults.hit("election.round")  # tests: an elector that runs late (slow API, starved)
            started = self.clock()
            try:
                held = self.try_acquire_or_renew()
            except (ApiError, ConnectionError, OSError, ValueError) as exc:
                log.warning("lease round failed: %s", exc)
                held = False
                if isinstance(exc, ApiError) and exc.status in (401, 403):
                    raise
            if held:
                self._renewed_from = started
                self._set_leader(True)
            elif self.is_leader and (
                self.clock() - self._renewed_from > self.duration * LEADING_FRACTION
                or self.holder not in (None, self.identity)
            ):
                # Step down before the Lease can be seen as expired by another replica.
                self._set_leader(False)
            stop.wait(self.period if self.is_leader else max(0.5, self.period / 2))
