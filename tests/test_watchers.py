"""The connected clients of one process: who receives a change, slow clients dropped, heartbeats, the limit."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message

from service.api.watchers import CHUNK_BYTES, KEEPALIVE, WAKE_BATCH, End, Watcher, Watchers

# (region filter, image filter) of a client -> whether a change to us-east-1/img-a reaches it.
FILTERS = [
    ((None, None), True),
    (("us-east-1", None), True),
    (("eu-west-1", None), False),
    ((None, "img-a"), True),
    ((None, "img-b"), False),
    (("us-east-1", "img-a"), True),
    (("eu-west-1", "img-a"), False),
    (("us-east-1", "img-b"), False),
]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def change(watchers: Watchers, seq: int, *, region: str = "us-east-1", image_id: str = "img-a") -> int:
    return watchers.publish(seq=seq, region=region, image_id=image_id, data=b"event%d" % seq)


@pytest.mark.parametrize(("key", "reached"), FILTERS)
def test_a_change_reaches_exactly_the_clients_whose_filter_matches(
    key: tuple[str | None, str | None], reached: bool
) -> None:
    watchers = Watchers(backlog=10)
    watcher = watchers.watch(region=key[0], image_id=key[1], after=0)
    assert change(watchers, 1) == int(reached)
    assert watcher.take() == (b"event1" if reached else None)


def test_one_change_is_handed_to_every_client_as_the_same_bytes() -> None:
    watchers = Watchers(backlog=10)
    clients = [watchers.watch(region=key[0], image_id=key[1], after=0) for key, _ in FILTERS]
    data = b"id: 7\nevent: image\ndata: {}\n\n"
    delivered = watchers.publish(seq=7, region="us-east-1", image_id="img-a", data=data)
    assert delivered == sum(reached for _, reached in FILTERS)
    held = [client.pending[0] for client in clients if client.pending]
    assert all(item is data for item in held)


def test_a_client_only_receives_changes_after_its_position() -> None:
    watchers = Watchers(backlog=10)
    watcher = watchers.watch(region=None, image_id=None, after=5)
    for seq in (4, 5, 6, 7):
        change(watchers, seq)
    assert watcher.take() == b"event6event7"


def test_a_client_too_far_behind_is_dropped_and_holds_nothing_while_the_others_go_on() -> None:
    watchers = Watchers(backlog=3)
    slow = watchers.watch(region=None, image_id=None, after=0)
    quick = watchers.watch(region=None, image_id=None, after=0)
    for seq in range(1, 4):
        change(watchers, seq)
        assert quick.take() == b"event%d" % seq
    assert slow.ended is None and len(slow.pending) == 3
    change(watchers, 4)
    assert slow.ended is End.SLOW and slow.pending == [] and watchers.dropped_slow == 1
    change(watchers, 5)
    assert slow.pending == [] and quick.take() == b"event4event5"
    assert len(watchers) == 1


class Socket:
    """A handed-over client's end of the wire: the bodies written to it, and whether more was to follow each."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, bool]] = []

    async def send(self, message: Message) -> None:
        self.written.append((message["body"], message["more_body"]))


async def written(*clients: Watcher) -> None:
    """Until these clients have no writer started or to start: a few turns of the loop, as these sockets never
    make a writer wait."""
    for _ in range(100):
        if not any(client.writer is not None or client.queued for client in clients):
            return
        await asyncio.sleep(0)
    raise AssertionError("writers still busy after 100 turns of the event loop")


@pytest.mark.asyncio
async def test_a_handed_over_client_is_written_each_change_and_holds_no_writer_between() -> None:
    watchers = Watchers(backlog=10)
    watcher = watchers.watch(region=None, image_id=None, after=0)
    change(watchers, 1)
    # What arrived before the hand-over (while its request sent what it missed) is written once it is handed over.
    socket = Socket()
    watchers.hand_over(watcher, socket.send)
    await written(watcher)
    assert socket.written == [(b"event1", True)] and watcher.writer is None
    change(watchers, 2)
    change(watchers, 3)
    await written(watcher)
    assert socket.written[1:] == [(b"event2event3", True)] and watcher.writer is None


@pytest.mark.asyncio
async def test_ending_a_stream_writes_what_it_holds_then_the_closing_comment() -> None:
    watchers = Watchers(backlog=10)
    watcher = watchers.watch(region=None, image_id=None, after=0)
    socket = Socket()
    watchers.hand_over(watcher, socket.send)
    change(watchers, 1)
    watchers.end(watcher, End.SHUTDOWN)
    await written(watcher)
    # Shutting down keeps what is held: it is written before the closing comment, which ends the response.
    assert socket.written == [(b"event1", True), (End.SHUTDOWN.value, False)] and watcher.writer is None


@pytest.mark.asyncio
async def test_a_client_that_left_is_written_nothing_more() -> None:
    watchers = Watchers(backlog=10)
    watcher = watchers.watch(region=None, image_id=None, after=0)
    socket = Socket()
    watchers.hand_over(watcher, socket.send)
    change(watchers, 1)
    watchers.release(watcher)
    change(watchers, 2)
    await written(watcher)
    assert socket.written == [] and len(watchers) == 0


def test_end_is_final_and_the_first_reason_stays() -> None:
    watchers = Watchers(backlog=10)
    watcher = watchers.watch(region=None, image_id=None, after=0)
    watchers.end(watcher, End.DISCONNECTED)
    watchers.end(watcher, End.SHUTDOWN)
    assert watcher.ended is End.DISCONNECTED and len(watchers) == 0
    assert change(watchers, 1) == 0


def test_end_all_ends_every_stream() -> None:
    watchers = Watchers(backlog=10)
    clients = [watchers.watch(region=key[0], image_id=key[1], after=0) for key, _ in FILTERS]
    watchers.end_all(End.SHUTDOWN)
    assert {client.ended for client in clients} == {End.SHUTDOWN} and len(watchers) == 0


def test_only_clients_sent_nothing_for_a_heartbeat_get_a_keepalive() -> None:
    clock = Clock()
    watchers = Watchers(backlog=10, clock=clock)
    quiet = watchers.watch(region=None, image_id="img-b", after=0)
    busy = watchers.watch(region=None, image_id="img-a", after=0)
    clock.now += 10
    change(watchers, 1)
    assert watchers.beat(every=15) == 0
    clock.now += 5
    assert watchers.beat(every=15) == 1
    assert quiet.take() == KEEPALIVE and busy.take() == b"event1"
    # Not again until another heartbeat has passed.
    clock.now += 10
    assert watchers.beat(every=15) == 1 and busy.take() == KEEPALIVE
    clock.now += 5
    assert watchers.beat(every=15) == 1 and quiet.take() == KEEPALIVE


def test_keepalives_due_at_once_are_spread_over_several_beats() -> None:
    clock = Clock()
    watchers = Watchers(backlog=10, clock=clock)
    clients = [watchers.watch(region=None, image_id=None, after=0) for _ in range(10)]
    clock.now += 15
    assert [watchers.beat(every=15, limit=4) for _ in range(4)] == [4, 4, 2, 0]
    assert all(client.take() == KEEPALIVE for client in clients)


def test_no_keepalive_is_queued_behind_unsent_events() -> None:
    clock = Clock()
    watchers = Watchers(backlog=10, clock=clock)
    watcher = watchers.watch(region=None, image_id=None, after=0)
    change(watchers, 1)
    clock.now += 60
    assert watchers.beat(every=15) == 0
    assert watcher.pending == [b"event1"]


def test_admission_stops_at_the_limit_and_a_leaving_stream_makes_room() -> None:
    watchers = Watchers(backlog=10)
    assert watchers.admit(2) and watchers.admit(2)
    assert not watchers.admit(2)
    watchers.leave()
    assert watchers.admit(2) and watchers.admitted == 2


def test_a_long_backlog_is_written_in_pieces_of_about_a_chunk() -> None:
    watcher = Watcher((None, None), after=0, now=0.0)
    event = b"x" * 1000
    watcher.pending.extend([event] * 200)
    pieces = []
    while (piece := watcher.take()) is not None:
        pieces.append(piece)
    assert b"".join(pieces) == event * 200
    assert all(CHUNK_BYTES <= len(piece) < CHUNK_BYTES + len(event) for piece in pieces[:-1])


def test_the_smallest_backlog_setting_holds_a_page_of_the_feed() -> None:
    from dataclasses import fields

    from service.settings import Settings
    from service.store.queries import FEED_PAGE

    # The tailer hands a page of revisions to every client at once: a smaller backlog would drop clients that
    # keep up perfectly well.
    backlog = next(setting for setting in fields(Settings) if setting.name == "sse_client_backlog")
    assert backlog.metadata["minimum"] >= FEED_PAGE



@pytest.mark.asyncio
@pytest.mark.slow
async def test_clients_are_woken_a_batch_per_turn_of_the_loop() -> None:
    watchers = Watchers(backlog=10)
    clients = [watchers.watch(region=None, image_id=None, after=0) for _ in range(3 * WAKE_BATCH)]
    sockets = [Socket() for _ in clients]
    for client, socket in zip(clients, sockets, strict=True):
        watchers.hand_over(client, socket.send)
    assert change(watchers, 1) == len(clients)
    # More changes before any writer started: each client still gets one writer.
    assert change(watchers, 2) == len(clients)
    woken = []
    for _ in range(3):
        await asyncio.sleep(0)
        woken.append(sum(not client.queued for client in clients))
    # Something else on the loop (a describe) runs between two batches.
    assert woken == [WAKE_BATCH, 2 * WAKE_BATCH, 3 * WAKE_BATCH]
    await written(*clients)
    assert all(socket.written == [(b"event1event2", True)] for socket in sockets)
