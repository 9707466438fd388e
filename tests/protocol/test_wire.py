"""The wire protocol, driven directly: no sockets, no processes."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ringzero.protocol import wire
from ringzero.protocol.wire import Connection, Frame, Kind, RemoteProtocolError, LocalProtocolError, Role


def pair():
    kernel, program = Connection(Role.KERNEL), Connection(Role.PROGRAM)
    kernel.receive_data(program.send(wire.hello()))
    assert kernel.next_frame().kind == Kind.HELLO
    program.receive_data(kernel.send(wire.welcome(1, 2, wire.DEFAULT_MAX_PAYLOAD)))
    assert program.next_frame().kind == Kind.WELCOME
    assert kernel.state is program.state is wire.State.READY
    return kernel, program


def test_handshake_then_requests_and_replies():
    kernel, program = pair()
    kernel.receive_data(program.send(Frame(Kind.CLOSE_HANDLE, 7, wire.HANDLE.pack(4), tid=99)))
    f = kernel.next_frame()
    assert (f.kind, f.rid, f.tid, bytes(f.payload)) == (Kind.CLOSE_HANDLE, 7, 99, wire.HANDLE.pack(4))
    program.receive_data(wire.reply(7, 0, 0, b"out"))
    r = program.next_frame()
    assert r.kind == Kind.REPLY and r.rid == 7
    assert wire.REPLY.unpack_from(r.payload) == (0, 0) and r.payload[wire.REPLY.size:] == b"out"


def test_request_before_hello_is_a_protocol_error():
    kernel = Connection(Role.KERNEL)
    kernel.receive_data(wire.encode(Frame(Kind.CLOSE_HANDLE, 1, wire.HANDLE.pack(4))))
    with pytest.raises(RemoteProtocolError, match="HELLO"):
        kernel.next_frame()


def test_wrong_magic_and_version():
    kernel = Connection(Role.KERNEL)
    kernel.receive_data(wire.encode(Frame(Kind.HELLO, 0, wire.HELLO.pack(0xDEADBEEF, 1, 0))))
    with pytest.raises(RemoteProtocolError, match="magic"):
        kernel.next_frame()
    kernel = Connection(Role.KERNEL)
    kernel.receive_data(wire.encode(Frame(Kind.HELLO, 0, wire.HELLO.pack(wire.MAGIC, 99, 0))))
    with pytest.raises(RemoteProtocolError, match="version 99"):
        kernel.next_frame()


def test_oversized_frame_rejected_from_its_header_alone():
    kernel, _ = pair()
    kernel.max_payload = 1024
    kernel.receive_data(wire.HEADER.pack(1025, Kind.WRITE_FILE, 0, 0, 0, 1))
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        kernel.next_frame()


def test_unknown_kind_and_wrong_direction():
    kernel, program = pair()
    kernel.receive_data(wire.HEADER.pack(0, 999, 0, 0, 0, 1))
    with pytest.raises(RemoteProtocolError, match="unknown frame kind"):
        kernel.next_frame()
    kernel, program = pair()
    kernel.receive_data(wire.encode(Frame(Kind.REPLY, 1, wire.REPLY.pack(0, 0))))
    with pytest.raises(RemoteProtocolError, match="may not be sent by the program"):
        kernel.next_frame()
    program.receive_data(wire.encode(Frame(Kind.CREATE_FILE, 1, b"")))
    with pytest.raises(RemoteProtocolError, match="may not be sent by the kernel"):
        program.next_frame()


def test_repeated_handshake_is_an_error():
    kernel, program = pair()
    kernel.receive_data(wire.encode(wire.hello()))
    with pytest.raises(RemoteProtocolError, match="repeated"):
        kernel.next_frame()


def test_descriptors_claimed_by_the_frame_that_announces_them():
    kernel, program = pair()
    f = Frame(Kind.MAP_VIEW, 5, wire.MAP_VIEW.pack(4096, 0, 3), fds=[42])
    data = kernel.send(f)
    program.receive_data(data[:10], [42])     # descriptors arrive with the first byte
    assert program.next_frame() is None
    program.receive_data(data[10:])
    got = program.next_frame()
    assert got.fds == [42] and program.unclaimed_fds() == []
    program.receive_data(wire.HEADER.pack(0, Kind.UNMAP_VIEW, 0, 2, 0, 6))
    with pytest.raises(RemoteProtocolError, match="announces 2 descriptors"):
        program.next_frame()


def test_descriptors_the_receiver_had_no_room_for_are_not_the_senders_error():
    """recvmsg's MSG_CTRUNC (the receiving process out of descriptors): the
    frame comes with those that arrived, marked short, for its handler to
    refuse; the next one is checked as strictly as ever."""
    kernel, program = pair()
    f = Frame(Kind.ATTACH_RING, 7, b"", fds=[10, 11, 12])
    kernel.receive_data(program.send(f), [10])
    kernel.fds_lost = True
    got = kernel.next_frame()
    assert (got.kind, got.rid, got.fds, kernel.short) == (Kind.ATTACH_RING, 7, [10], True)
    assert not kernel.fds_lost
    kernel.receive_data(program.send(Frame(Kind.ATTACH_RING, 8, b"", fds=[1, 2, 3])))
    with pytest.raises(RemoteProtocolError, match="announces 3 descriptors"):
        kernel.next_frame()


def test_sending_rules():
    program = Connection(Role.PROGRAM)
    with pytest.raises(LocalProtocolError, match="HELLO must be sent first"):
        program.send(Frame(Kind.CLOSE_HANDLE, 1, b""))
    with pytest.raises(LocalProtocolError, match="over the limit"):
        wire.encode(Frame(Kind.WRITE_FILE, 1, b"x" * 11), max_payload=10)


frames = hs.builds(
    lambda kind, rid, tid, payload, flags: Frame(kind, rid, payload, flags, tid),
    hs.sampled_from([Kind.CREATE_FILE, Kind.DEVICE_IO_CONTROL, Kind.WRITE_FILE, Kind.WAIT, Kind.CALL, Kind.UPCALL_REPLY]),
    hs.integers(0, 2**64 - 1), hs.integers(0, 2**32 - 1), hs.binary(max_size=300), hs.integers(0, 255))


@settings(max_examples=200, deadline=None)
@given(hs.lists(frames, max_size=20), hs.lists(hs.integers(1, 64), min_size=1, max_size=50))
def test_any_chunking_yields_the_same_frames(sent, cuts):
    kernel, program = pair()
    data = b"".join(program.send(f) for f in sent)
    got, pos, i = [], 0, 0
    while pos < len(data):
        n = cuts[i % len(cuts)]
        kernel.receive_data(data[pos:pos + n])
        pos += n
        i += 1
        while (f := kernel.next_frame()) is not None:
            got.append(f)
    assert [(f.kind, f.rid, f.tid, f.flags, bytes(f.payload)) for f in got] == \
           [(f.kind, f.rid, f.tid, f.flags, bytes(f.payload)) for f in sent]


@settings(max_examples=300, deadline=None)
@given(hs.binary(max_size=2000))
def test_arbitrary_bytes_only_ever_raise_protocol_errors(junk):
    for prefix in (b"", wire.encode(wire.hello())):
        kernel = Connection(Role.KERNEL, max_payload=4096)
        kernel.receive_data(prefix + junk)
        try:
            while kernel.next_frame() is not None:
                pass
        except wire.ProtocolError:
            pass


def test_header_layout_is_fixed():
    assert wire.HEADER_SIZE == 20
    assert wire.HEADER.pack(1, 2, 3, 4, 5, 6) == struct.pack("<IHBBIQ", 1, 2, 3, 4, 5, 6)
