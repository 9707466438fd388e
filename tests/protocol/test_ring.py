"""Shared-memory rings, driven directly: a model FIFO, wrap-around, hostile counters."""

import mmap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ringzero.protocol import ring as rings
from ringzero.protocol import wire


def region(size=4096):
    m = mmap.mmap(-1, rings.region_size(size))
    mv = memoryview(m)
    rings.init_region(mv, size)
    return m, mv


def take_next(cons, model):
    """The consumer gets the model's oldest frame, or nothing when it is empty."""
    assert cons.get() == (model.pop(0) if model else None)


def drain(cons, model):
    while model:
        take_next(cons, model)
    assert cons.get() is None


def frame(i, n):
    return wire.HEADER.pack(n, wire.Kind.WRITE_FILE, 0, 0, 0, i) + bytes([i % 251]) * n


@settings(max_examples=150, deadline=None)
@given(hs.lists(hs.tuples(hs.booleans(), hs.integers(0, 1100)), max_size=400))
def test_ring_is_a_fifo_of_whole_frames(ops):
    m, mv = region()
    prod, _ = rings.program_side(mv, 4096)
    cons, _ = rings.kernel_side(mv, 4096)
    model, i = [], 0
    for put, n in ops:
        if put:
            f = frame(i, n)
            i += 1
            total = (len(f) + 7) & ~7
            free = 4096 - (prod.pos - cons.pos)
            room = 4096 - prod.pos % 4096
            fits = total <= prod.max_frame and free >= (total if room >= total else room + total)
            assert prod.put(f) == fits     # refused exactly when too large or not fitting now
            if fits:
                model.append(f)
        else:
            take_next(cons, model)
    drain(cons, model)


@settings(max_examples=100, deadline=None)
@given(hs.lists(hs.tuples(hs.booleans(), hs.integers(0, 1100), hs.integers(0, 1200)), max_size=300))
def test_frames_put_in_two_parts_and_read_in_place_are_the_same_fifo(ops):
    """put(head, body) stores head + body as one frame; peek() shows the next
    frame where it lies and advance() gives its room back, like get()."""
    m, mv = region()
    prod, _ = rings.program_side(mv, 4096)
    cons, _ = rings.kernel_side(mv, 4096)
    model, i = [], 0
    for put, n, cut in ops:
        if put:
            f = frame(i, n)
            i += 1
            cut = min(cut, len(f))
            if prod.put(f[:cut], memoryview(f)[cut:]):
                model.append(f)
        elif i % 2:
            view = cons.peek()
            assert (bytes(view) if view is not None else None) == (model.pop(0) if model else None)
            if view is not None:
                cons.advance()
        else:
            assert cons.get() == (model.pop(0) if model else None)
    while model:
        assert cons.get() == model.pop(0)
    assert cons.peek() is None


@settings(max_examples=100, deadline=None)
@given(hs.lists(hs.tuples(hs.integers(0, 3), hs.integers(0, 1100), hs.integers(0, 1100)), max_size=300))
def test_frames_built_in_place_are_the_same_fifo(ops):
    """reserve(k, n) gives the room of a frame's body, nothing published; commit
    publishes the frame with as much of that room as was used (the rest given
    back), and a reservation never committed leaves the ring as it was."""
    m, mv = region()
    prod, _ = rings.program_side(mv, 4096)
    cons, _ = rings.kernel_side(mv, 4096)
    model, i = [], 0
    for op, n, used in ops:
        f = frame(i, n)
        i += 1
        if op == 0:                   # an ordinary put
            if prod.put(f):
                model.append(f)
        elif op in (1, 2):            # built in place: the head now, the body written into its room
            used = min(used, n)
            before = (prod.pos, bytes(prod.ctl))
            room = prod.reserve(wire.HEADER_SIZE, n)
            total = (wire.HEADER_SIZE + n + 7) & ~7
            free = 4096 - (prod.pos - cons.pos)
            end = 4096 - prod.pos % 4096
            assert (room is not None) == (total <= prod.max_frame and free >= (total if end >= total else end + total))
            assert (prod.pos, bytes(prod.ctl)) == before         # nothing the consumer can see yet
            if room is None:
                continue
            assert len(room) == n
            room[:used] = f[wire.HEADER_SIZE:wire.HEADER_SIZE + used]
            if op == 1:
                head = wire.HEADER.pack(used, wire.Kind.WRITE_FILE, 0, 0, 0, i - 1)
                prod.commit(head, used)
                model.append(head + f[wire.HEADER_SIZE:wire.HEADER_SIZE + used])
            # op 2: dropped, never committed
        else:
            take_next(cons, model)
    drain(cons, model)


def test_counters_out_of_range_are_protocol_errors():
    m, mv = region()
    prod, _ = rings.program_side(mv, 4096)
    cons, _ = rings.kernel_side(mv, 4096)
    ctl = mv[:rings.HEADER_BYTES].cast("Q")
    ctl[rings.OFF_REQ_HEAD // 8] = 1 << 40          # a hostile producer
    with pytest.raises(wire.RemoteProtocolError):
        cons.get()
    ctl[rings.OFF_REQ_HEAD // 8] = 0
    ctl[rings.OFF_REQ_TAIL // 8] = 10_000            # a hostile consumer
    with pytest.raises(wire.RemoteProtocolError):
        prod.put(frame(1, 8))


def test_a_frame_header_claiming_more_than_was_written():
    m, mv = region()
    prod, _ = rings.program_side(mv, 4096)
    cons, _ = rings.kernel_side(mv, 4096)
    assert prod.put(frame(1, 8))
    wire.HEADER.pack_into(prod.data, 0, 900, wire.Kind.WRITE_FILE, 0, 0, 0, 1)
    with pytest.raises(wire.RemoteProtocolError, match="overruns"):
        cons.get()


def test_region_validation():
    m, mv = region()
    assert rings.check_region(mv) == 4096
    mv[:rings.HEADER_BYTES].cast("Q")[1] = 3000      # not a power of two
    with pytest.raises(wire.RemoteProtocolError):
        rings.check_region(mv)


def test_ring_frames_are_checked_like_socket_frames():
    with pytest.raises(wire.RemoteProtocolError):
        wire.decode_ring_frame(wire.encode(wire.hello()), wire.Role.KERNEL)
    with pytest.raises(wire.RemoteProtocolError):
        wire.decode_ring_frame(wire.reply(1, 0), wire.Role.KERNEL)     # wrong direction
    f = wire.decode_ring_frame(wire.encode(wire.Frame(wire.Kind.CLOSE_HANDLE, 3, wire.HANDLE.pack(4))), wire.Role.KERNEL)
    assert f.rid == 3
