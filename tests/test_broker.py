from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from loacl.domain.accounts import EmailVerified
from loacl.domain.events import Metadata, RecordedEvent
from loacl.store.broker import Broker, Subscription, SubscriptionOverflow

PATIENCE = 10.0  # a guard against a hang, never a measurement


def recorded(seq: int, stream: str = "user-a") -> RecordedEvent:
    return RecordedEvent(
        seq=seq, stream=stream, version=seq, event=EmailVerified(user_id="a"),
        metadata=Metadata(), recorded_at=datetime(2030, 1, 1, tzinfo=UTC), hash=f"{seq:064x}",
    )


async def drain(subscription: Subscription) -> list[int]:
    return [event.seq async for event in subscription]


async def get(subscription: Subscription) -> RecordedEvent:
    return await asyncio.wait_for(subscription.get(), PATIENCE)


async def test_every_subscriber_gets_events_in_order_filtered() -> None:
    broker = Broker()
    everything = broker.subscribe()
    also = broker.subscribe()
    only_b = broker.subscribe(lambda event: event.stream == "user-b")
    broker.publish([recorded(1), recorded(2, "user-b")])
    broker.publish([recorded(3), recorded(4, "user-b")])
    broker.close()
    assert await drain(everything) == [1, 2, 3, 4]
    assert await drain(also) == [1, 2, 3, 4]
    assert await drain(only_b) == [2, 4]


async def test_close_wakes_a_waiting_reader_and_the_end_stays() -> None:
    broker = Broker()
    subscription = broker.subscribe()
    waiting = asyncio.ensure_future(subscription.get())
    await asyncio.sleep(0)
    subscription.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, PATIENCE)
    with pytest.raises(StopAsyncIteration):
        await get(subscription)
    subscription.close()  # twice is harmless
    broker.publish([recorded(1)])  # a closed subscription hears nothing more
    assert await drain(subscription) == []


async def test_closing_a_full_subscription_loses_nothing_it_buffered() -> None:
    broker = Broker()
    subscription = broker.subscribe(maxsize=3)
    broker.publish([recorded(1), recorded(2), recorded(3)])
    broker.close()
    assert not subscription.overflowed
    assert await drain(subscription) == [1, 2, 3]


async def test_an_overflowing_subscriber_is_dropped_without_a_gap() -> None:
    broker = Broker()
    slow = broker.subscribe(maxsize=2)
    steady = broker.subscribe(maxsize=10)
    broker.publish([recorded(1), recorded(2), recorded(3)])
    broker.publish([recorded(4)])

    assert slow.overflowed
    assert slow.closed
    # It gets everything it buffered, in order and with no hole, so that it can resume from the
    # log after the last event it saw; then it learns it was dropped, every time it asks.
    assert [(await get(slow)).seq for _ in range(2)] == [1, 2]
    for _ in range(2):
        with pytest.raises(SubscriptionOverflow):
            await get(slow)

    assert [(await get(steady)).seq for _ in range(4)] == [1, 2, 3, 4]
    broker.publish([recorded(5)])
    assert (await get(steady)).seq == 5
    assert not steady.overflowed


async def test_a_dropped_subscriber_ends_its_async_for_with_overflow() -> None:
    broker = Broker()
    slow = broker.subscribe(maxsize=1)
    broker.publish([recorded(1), recorded(2)])
    seen: list[int] = []
    with pytest.raises(SubscriptionOverflow):
        async for event in slow:
            seen.append(event.seq)
    assert seen == [1]


async def test_a_stream_subscription_hears_its_stream_only_and_leaves_when_closed() -> None:
    broker = Broker()
    conversation = broker.subscribe(stream="conversation-c1")
    filtered = broker.subscribe(lambda event: event.seq != 3, stream="conversation-c1")
    other = broker.subscribe(stream="conversation-c2")
    everything = broker.subscribe()
    broker.publish([recorded(1, "conversation-c1"), recorded(2, "conversation-c2"),
                    recorded(3, "conversation-c1"), recorded(4, "user-a")])
    other.close()
    broker.publish([recorded(5, "conversation-c2")])  # nobody listens to c2 any more
    assert "conversation-c2" not in broker._by_stream
    broker.close()
    assert await drain(conversation) == [1, 3]
    assert await drain(filtered) == [1]
    assert await drain(other) == [2]
    assert await drain(everything) == [1, 2, 3, 4, 5]
    assert broker._by_stream == {} and broker._subscribers == set()
