"""``kubevents produce``: wires the API source, the Lease and the Kafka publisher together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future

from prometheus_client import Counter

from app.errors import UserError
from app.kafka.client import ensure_topics, start_producer
from app.kafka.writer import BatchWriter
from app.kube.client import ApiError, KubeClient, explain_api_error
from app.kube.election import LeaseElector
from app.obs import HttpServer
from app.producer.publisher import Publisher
from app.producer.source import EventSource, Records, events_path
from app.settings import Settings
from app.testing import faults

log = logging.getLogger("kubevents.producer")

WITHHELD = Counter(
    "kubevents_producer_withheld_total",
    "Records read and not handed to Kafka because this replica's leadership lapsed before they"
    " could be sent (whoever leads next re-lists them).",
)


def preflight(client: KubeClient, settings: Settings) -> None:
    """Fail fast, in one line, on an unreachable API server or missing permissions."""
    scopes: list[str | None] = [*settings.producer.namespaces] or [None]
    for ns in scopes:
        path = events_path(settings.producer.api, ns)
        what = f"list events in {'namespace ' + ns if ns else 'all namespaces'}"
        try:
            client.get_json(path, {"limit": 1})
        except (ApiError, ConnectionError) as exc:
            raise UserError(explain_api_error(exc, what)) from None
        # A watch needs its own verb: check it too, with a request that returns at once.
        try:
            for _ in client.watch_batches(
                path, {"limit": 1, "timeoutSeconds": 1}, 5, threading.Event()
            ):
                break
        except (ApiError, ConnectionError) as exc:
            raise UserError(explain_api_error(exc, what.replace("list", "watch"))) from None


class Producer:
    def __init__(
        self,
        settings: Settings,
        client: KubeClient,
        publisher: Publisher,
        loop: asyncio.AbstractEventLoop,
    ):
        self.settings, self.client, self.publisher, self.loop = settings, client, publisher, loop
        self.fatal: asyncio.Future[BaseException] = loop.create_future()
        self._sources: list[EventSource] = []
        self._source_stop = threading.Event()
        self._lock = threading.Lock()
        self._handoff = threading.local()  # per source thread: its batch being handed over
        # May this replica publish now? Without leader election, always; with it, the elector's
        # ``leading()``, asked right before each batch goes to Kafka's client.
        self.leading: Callable[[], bool] = lambda: True

    async def _allowed(self, stop: threading.Event, n: int) -> bool:
        """Right before a batch goes to Kafka's client: wait while leadership is in doubt (a
        renewal late, or this process was frozen and its elector has not run yet), send once it
        is valid, drop the batch once its sources were stopped (we stepped down: the next
        leader, maybe us again, re-lists from scratch, so nothing is lost)."""
        while not self.leading():
            if stop.is_set():
                WITHHELD.inc(n)
                return False
            await asyncio.sleep(0.05)  # polled: the elector runs in its own thread
        return True

    def sink(self, records: Records, *, stop: threading.Event) -> None:
        """Called from a source thread: hands ``records`` to the event loop for publishing.

        Returns as soon as the *previous* batch of this thread has been handed to Kafka's client,
        so that the source reads and encodes its next page while this one is published: one
        batch ahead, never more, and batches of one source are published in order. Blocks while
        Kafka is not keeping up (backpressure: the publisher holds at most the in-flight limit).
        ``stop`` is the stop event of the sources this batch was read by: once it is set, a batch
        that may no longer be published is dropped instead of waited on.
        """
        previous: Future[None] | None = getattr(self._handoff, "pending", None)
        if previous is not None:
            previous.result()
        future = asyncio.run_coroutine_threadsafe(
            self.publisher.publish(records, functools.partial(self._allowed, stop)), self.loop
        )
        future.add_done_callback(self._publish_done)
        self._handoff.pending = future

    def _publish_done(self, future: Future[None]) -> None:
        # A publish that failed is fatal, as it was when the source waited for it: report it
        # even if the source never hands over another batch.
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self.loop.call_soon_threadsafe(self._report_fatal, exc)

    def _report_fatal(self, exc: BaseException) -> None:
        if not self.fatal.done():
            self.fatal.set_result(exc)

    def _thread(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                self.loop.call_soon_threadsafe(self._report_fatal, exc)

        threading.Thread(target=run, name=name, daemon=True).start()

    def start_sources(self) -> None:
        """Begin list+watch (on becoming leader). A new leader always re-lists."""
        with self._lock:
            stop = self._source_stop = threading.Event()
            scopes: list[str | None] = [*self.settings.producer.namespaces] or [None]
            self._sources = [
                EventSource(
                    self.client.clone(),
                    self.settings.producer,
                    functools.partial(self.sink, stop=stop),
                    cluster=self.settings.cluster.name,
                    namespace=ns,
                    stop=self._source_stop,
                )
                for ns in scopes
            ]
            for src in self._sources:
                self._thread(f"source-{src.namespace or 'all'}", src.run)

    def stop_sources(self) -> None:
        with self._lock:
            self._source_stop.set()
            for src in self._sources:
                src.client.interrupt()
            self._sources = []

    def ready(self) -> tuple[bool, str]:
        if self.fatal.done():
            return False, "stopped on a fatal error"
        if self.publisher.full:
            return False, "Kafka is not acknowledging: reading paused"
        if not self._sources:
            return True, "standing by (not the leader)"
        if all(src.watching.is_set() for src in self._sources):
            return True, "watching"
        return False, "listing or reconnecting"


def tune_gc() -> None:
    """Less garbage-collector work per event (the benchmark's bare reader uses it too).

    What the producer reads becomes dicts and lists without cycles, yet each LIST page allocates
    some 20k containers: at the default threshold (700) the collector runs dozens of times per
    page, and its older-generation passes walk every object of the process (~70k once the
    clients are imported); that cost as much CPU as parsing the page. Objects alive after
    start-up are moved out of its way and young objects are collected every 10k allocations.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def run(settings: Settings) -> int:
    faults.configure(settings.faults)
    client = KubeClient.from_settings(settings.kubernetes)
    await asyncio.to_thread(preflight, client, settings)
    await ensure_topics(settings.kafka, settings.topics)
    kafka = await start_producer(settings.kafka, "kubevents-producer")
    loop = asyncio.get_running_loop()
    tune_gc()
    publisher = Publisher(
        BatchWriter(kafka), settings.topics.raw, settings.kafka.max_in_flight_events
    )
    producer = Producer(settings, client, publisher, loop)
    stop_all = threading.Event()
    elector: LeaseElector | None = None
    if settings.producer.leader_election:
        p = settings.producer
        elector = LeaseElector(
            client.clone(),
            namespace=p.lease_namespace,
            name=p.lease_name,
            identity=p.identity,
            lease_duration_s=p.lease_duration_s,
            renew_period_s=p.renew_period_s,
            on_started=producer.start_sources,
            on_stopped=producer.stop_sources,
        )
        producer.leading = elector.leading
        producer._thread("lease", lambda: elector.run(stop_all) if elector else None)
    else:
        producer.start_sources()

    http = None
    if settings.producer.http_port:
        http = HttpServer(settings.producer.http_bind, settings.producer.http_port)
        http.add_check(producer.ready)
        await http.start()
    stopping = loop.create_future()

    def request_stop() -> None:
        if not stopping.done():
            stopping.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    log.info(
        "producer started",
        extra={
            "identity": settings.producer.identity,
            "topic": settings.topics.raw,
            "leader_election": settings.producer.leader_election,
        },
    )
    done, _ = await asyncio.wait([stopping, producer.fatal], return_when=asyncio.FIRST_COMPLETED)
    stop_all.set()
    producer.stop_sources()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(publisher.drain(), timeout=10)
    await publisher.stop()
    if elector is not None:
        await asyncio.to_thread(elector.release)
    await kafka.stop()
    if http is not None:
        await http.stop()
    if producer.fatal in done:
        failure = producer.fatal.result()
        if isinstance(failure, ApiError | ConnectionError):
            raise UserError(explain_api_error(failure, "list/watch events")) from None
        raise failure
    return 0
