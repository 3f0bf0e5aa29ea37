"""app/kafka/renewing.py ``acknowledged``: a write's batches are awaited together with the
producer's sender, whose end leaves the unresolved ones unresolved for ever."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from app.kafka.renewing import SenderStopped, acknowledged


def producer_with(sender: asyncio.Task[None]) -> Any:
    return SimpleNamespace(_sender=SimpleNamespace(sender_task=sender))


async def forever() -> None:
    await asyncio.Event().wait()


def test_the_results_once_every_batch_is_acknowledged() -> None:
    async def run() -> list[Any]:
        sender = asyncio.ensure_future(forever())
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]
        for i, f in enumerate(futures):
            loop.call_later(0.01 * (3 - i), f.set_result, i)
        try:
            return await asyncio.wait_for(acknowledged(producer_with(sender), futures), 5)
        finally:
            sender.cancel()

    assert asyncio.run(run()) == [0, 1, 2]


def test_the_first_failure_is_raised_without_waiting_for_the_rest() -> None:
    async def run() -> None:
        sender = asyncio.ensure_future(forever())
        loop = asyncio.get_running_loop()
        failed, pending = loop.create_future(), loop.create_future()
        loop.call_later(0.01, failed.set_exception, RuntimeError("NotEnoughReplicas"))
        try:
            with pytest.raises(RuntimeError, match="NotEnoughReplicas"):
                await asyncio.wait_for(acknowledged(producer_with(sender), [pending, failed]), 5)
        finally:
            sender.cancel()

    asyncio.run(run())


def test_a_sender_that_ends_first_is_a_failure_to_retry() -> None:
    async def run() -> None:
        sender: asyncio.Task[None] = asyncio.ensure_future(asyncio.sleep(0.01))
        loop = asyncio.get_running_loop()
        done, orphan = loop.create_future(), loop.create_future()
        done.set_result(1)
        with pytest.raises(SenderStopped, match="1 batches unsent") as raised:
            await asyncio.wait_for(acknowledged(producer_with(sender), [done, orphan]), 5)
        assert raised.value.retriable

    asyncio.run(run())
