"""The kernel's own work for the Example stream, in one process, against the bare relay's.

The stream benchmark (bench.example_stream) measures three processes on the
machine's CPUs, so its rates move with whatever else the machine runs.  This
one times only the kernel's part of the stream's two requests: a CHUNK-byte
write frame and a CHUNK-byte read frame taken from a request ring, served
through the I/O manager and the Example driver (fast I/O, as the stream's
synchronous handles get it), answered into a response ring.  The benchmark
plays the program's side of the rings itself, outside the timing.  The peer is
the bare relay's step (bench.example_stream.Relay) on the same frames: the
kernel's two copies of the chunk and nothing else.  Then the programs' part:
a WriteFile and a ReadFile of CHUNK bytes through the pywin32 layer and the
client library, their requests answered as soon as they are put in the ring
by a stub whose own time is taken out; its peer is the bare relay's programs
(bench.example_stream.relay_send and relay_receive) answered by the same stub.
Everything runs in this process, in alternate rounds, with the garbage
collector off; the best round is the cost with the least interference, and
the ratios are what the NT machinery costs on top of the copies on each side.

    PYTHONPATH=src python -m bench.kernel_path [--rounds 100] [--pairs 100]
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time

from bench import example_stream as stream     # (importing bench puts this tree's ringzero first)

RING = 1 << 20          # the rings' size, as large as a program's may be


def _region(size: int) -> memoryview:
    from ringzero.protocol import ring as rings
    mv = memoryview(mmap.mmap(-1, rings.region_size(size)))
    rings.init_region(mv, size)
    return mv


class KernelSide:
    """A kernel booted in this process with Example loaded, one handle to
    \\\\.\\Example\\KernelPath (synchronous: fast I/O), and that handle's
    connection answering into a ring pair this benchmark holds."""

    def __init__(self, chunk: int):
        self.dir = tempfile.mkdtemp(prefix="ringzero-kernel-path-")
        os.environ["RINGZERO_SOCKET"] = os.path.join(self.dir, "k.sock")
        os.environ["RINGZERO_STATE"] = os.path.join(self.dir, "state")
        os.environ["RINGZERO_RING"] = "0"       # our own requests go by the socket; the rings are ours
        from ringzero.drivers import example, example_ioctl
        from ringzero.kernel import calls, ringpoll
        from ringzero.kernel.boot import Kernel
        from ringzero.protocol import ring as rings
        from ringzero.protocol import wire
        from ringzero.win32 import win32con, win32file
        self.kernel = Kernel()
        self.kernel.start()
        calls.load_driver("Example", example.__file__)
        self.handle = win32file.CreateFile(r"\\.\Example\KernelPath", win32con.GENERIC_READ | win32con.GENERIC_WRITE,
                                           0, None, win32con.OPEN_EXISTING, 0, None)
        win32file.DeviceIoControl(self.handle, example_ioctl.IOCTL_EXAMPLE_SET_SIZE, struct.pack("<I", RING), 0)
        conn = next(c for c in self.kernel.host.connections if c.process and c.process.pid == os.getpid())
        mv = _region(RING)
        self.channel = ringpoll.Channel(conn, mv.obj, RING, os.eventfd(0), os.eventfd(0))
        conn.channel = self.channel        # replies go to our response ring from now on
        self.req, self.resp = rings.program_side(mv, RING)
        self.poller = ringpoll.get_poller()
        h = int(self.handle)
        K = wire.K
        self.data = os.urandom(chunk)
        self.write_head = wire.WRITE_HEAD.pack(wire.WRITE_HEAD.size - wire.HEADER_SIZE + chunk, K.WRITE_FILE, 0, 0,
                                               1, 1, h, -1, 0, 0)
        self.read_frame = wire.READ_FRAME.pack(wire.READ_FRAME.size - wire.HEADER_SIZE, K.READ_FILE, 0, 0, 1, 2, h,
                                               chunk, -1, 0, 0)
        self.reply = wire.REPLY_HEAD
        self.chunk = chunk

    def _answer(self) -> tuple[int, int, int]:
        view = self.resp.peek()
        if view is None:
            raise RuntimeError("the kernel did not answer")
        _, _, _, _, _, _, status, info = self.reply.unpack_from(view)
        n = len(view) - self.reply.size
        self.resp.advance()
        return status, info, n

    def round(self, pairs: int) -> float:
        """Seconds of kernel work per write+read pair over `pairs` pairs."""
        service, ch, req, clock = self.poller._service, self.channel, self.req, time.perf_counter
        spent = 0.0
        for _ in range(pairs):
            req.put(self.write_head, self.data)
            t = clock()
            service(ch)
            spent += clock() - t
            status, info, _ = self._answer()
            req.put(self.read_frame)
            t = clock()
            service(ch)
            spent += clock() - t
            status2, info2, n = self._answer()
            if (status, info, status2, info2, n) != (0, self.chunk, 0, self.chunk, self.chunk):
                raise RuntimeError(f"unexpected answers: write {status:#x}/{info}, read {status2:#x}/{info2} "
                                   f"with {n} bytes")
        return spent / pairs

    def close(self) -> None:
        from ringzero import client
        self.kernel.stop()
        client.disconnect()
        shutil.rmtree(self.dir, ignore_errors=True)


def _stub_ring(mv: memoryview, answer):
    """The program's request ring of `mv`, whose every put is answered at
    once: answer(kernel_req, kernel_resp) takes the frame off and puts the
    reply.  The answering time is summed in ring.stub_time."""
    from ringzero.protocol import ring as rings

    class StubRing(rings.Ring):
        __slots__ = ("stub_time",)

        def put(self, frame, body=b""):
            ok = rings.Ring.put(self, frame, body)
            t = time.perf_counter()
            answer(kreq, kresp)
            self.stub_time += time.perf_counter() - t
            return ok

    kreq, kresp = rings.kernel_side(mv, RING)
    ring = StubRing(mv, RING, rings.HEADER_BYTES, rings.OFF_REQ_HEAD, rings.OFF_REQ_TAIL, producer=True,
                    flag_off=rings.OFF_REQ_POLLED)
    ring.stub_time = 0.0
    kreq.set_flag(1)           # "the kernel polls this ring": the program rings no doorbell
    return ring, rings.program_side(mv, RING)[1]


class ProgramSide:
    """This process's own connection, its rings replaced by a stubbed pair: a
    WriteFile and a ReadFile on the KernelSide's handle, answered at once."""

    def __init__(self, kernel: KernelSide, chunk: int):
        from ringzero import client
        from ringzero.protocol import wire
        from ringzero.win32 import win32file
        K = wire.K
        reply, reply_size = wire.REPLY_HEAD, wire.REPLY.size
        data = os.urandom(chunk)

        def answer(kreq, kresp):
            view = kreq.peek()
            length, kind, _, _, _, rid = wire.HEADER.unpack_from(view)
            kreq.advance()
            if kind == K.WRITE_FILE:
                kresp.put(reply.pack(reply_size, K.REPLY, 0, 0, 0, rid, 0, length - wire.WRITE.size))
            else:
                kresp.put(reply.pack(reply_size + chunk, K.REPLY, 0, 0, 0, rid, 0, chunk), data)

        conn = client.connection()
        conn.req_ring, conn.resp_ring = self.req, _ = _stub_ring(_region(RING), answer)
        conn.max_ring_body = self.req.max_frame - wire.HEADER_SIZE - client.RING_FIXED_PART
        conn._resp_efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)    # (a wait never sleeps here)
        self.handle, self.write, self.read = kernel.handle, win32file.WriteFile, win32file.ReadFile
        self.data, self.buf, self.chunk = data, win32file.AllocateReadBuffer(chunk), chunk

    def round(self, pairs: int) -> float:
        h, write, read, data, buf, req, clock = (self.handle, self.write, self.read, self.data, self.buf, self.req,
                                                 time.perf_counter)
        req.stub_time = 0.0
        t = clock()
        for _ in range(pairs):
            if write(h, data)[1] != self.chunk or len(read(h, buf)[1]) != self.chunk:
                raise RuntimeError("a stubbed WriteFile or ReadFile moved less than a chunk")
        return (clock() - t - req.stub_time) / pairs


class RelayProgramsSide:
    """The bare relay's writer and reader (relay_send, relay_receive) on two
    stubbed ring pairs, answered at once as the relay would."""

    def __init__(self, chunk: int):
        ack, data_head = stream._frame_head(stream._ACK_KIND, 0), stream._frame_head(stream._DATA_KIND, chunk)
        data = os.urandom(chunk)

        def answer_write(kreq, kresp):
            kreq.peek()
            kreq.advance()
            kresp.put(ack)

        def answer_read(kreq, kresp):
            kreq.peek()
            kreq.advance()
            kresp.put(data_head, data)

        self.wreq, self.wresp = _stub_ring(_region(RING), answer_write)
        self.rreq, self.rresp = _stub_ring(_region(RING), answer_read)
        self.ask, self.data, self.buf, self.chunk = stream.relay_ask(chunk), data, bytearray(chunk), chunk

    def round(self, pairs: int) -> float:
        send, receive, clock = stream.relay_send, stream.relay_receive, time.perf_counter
        wreq, wresp, rreq, rresp, ask, data, buf = (self.wreq, self.wresp, self.rreq, self.rresp, self.ask,
                                                    self.data, self.buf)
        wreq.stub_time = rreq.stub_time = 0.0
        t = clock()
        for _ in range(pairs):
            send(wreq, wresp, data)
            if receive(rreq, rresp, ask, buf) != self.chunk:
                raise RuntimeError("a stubbed relay read moved less than a chunk")
        return (clock() - t - wreq.stub_time - rreq.stub_time) / pairs


class RelaySide:
    """The bare relay's step on two ring pairs this benchmark feeds."""

    def __init__(self, chunk: int):
        from ringzero.protocol import ring as rings
        w, r = _region(RING), _region(RING)
        self.wreq, self.wresp = rings.program_side(w, RING)
        self.rreq, self.rresp = rings.program_side(r, RING)
        self.relay = stream.Relay(*rings.kernel_side(w, RING), *rings.kernel_side(r, RING))
        self.data = os.urandom(chunk)
        self.data_head = stream._frame_head(stream._DATA_KIND, chunk)
        self.ask = stream.relay_ask(chunk)
        self.chunk = chunk

    def round(self, pairs: int) -> float:
        step, clock = self.relay.step, time.perf_counter
        spent = 0.0
        for _ in range(pairs):
            self.wreq.put(self.data_head, self.data)
            self.rreq.put(self.ask)
            t = clock()
            step()
            spent += clock() - t
            for ring in (self.wresp, self.rresp):
                if ring.peek() is None:
                    raise RuntimeError("the relay did not answer")
                ring.advance()
        return spent / pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernel_path", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=100, help="rounds of each, alternating (default 100)")
    ap.add_argument("--pairs", type=int, default=100, help="write+read pairs per round (default 100)")
    ap.add_argument("--chunk", type=int, default=64 * 1024, help="bytes per write and per read (default 65536)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    a = ap.parse_args(argv)
    if not 0 < a.chunk <= RING // 2 - 64:
        ap.error(f"--chunk must be 1 .. {RING // 2 - 64} (a frame takes up to half a ring)")
    from ringzero.protocol import ring as rings
    if not rings.supported():
        print("the shared-memory rings need x86-64; this machine is " + os.uname().machine, file=sys.stderr)
        return 1
    k = KernelSide(a.chunk)
    try:
        sides = {"kernel": k, "relay": RelaySide(a.chunk)}
        # (the kernel side is set up first: its handle was opened through the connection the stubs now take)
        sides["programs"], sides["relay_programs"] = ProgramSide(k, a.chunk), RelayProgramsSide(a.chunk)
        for side in sides.values():
            side.round(a.pairs)          # warm up
        times = {name: [] for name in sides}
        gc.disable()
        try:
            for _ in range(a.rounds):
                for name, side in sides.items():
                    times[name].append(side.round(a.pairs))
        finally:
            gc.enable()
    finally:
        k.close()
    best = {name: min(t) * 1e6 for name, t in times.items()}
    median = {name: statistics.median(t) * 1e6 for name, t in times.items()}
    print(f"one {a.chunk}-byte write and one {a.chunk}-byte read, in this process; "
          f"best (median) of {a.rounds} rounds of {a.pairs} pairs; Python {sys.version.split()[0]}")
    lines = [("ringzero kernel", "kernel", "ring in, I/O manager, Example's fast I/O, ring out"),
             ("bare relay", "relay", "the same two copies and nothing else"),
             ("ringzero programs", "programs", "WriteFile + ReadFile, pywin32 layer and client, answered at once"),
             ("relay programs", "relay_programs", "the relay's writer and reader, answered at once")]
    for label, name, what in lines:
        print(f"{label:18s} {best[name]:6.2f} us  ({median[name]:.2f})   {what}")
    kernel_ratio, program_ratio = best["kernel"] / best["relay"], best["programs"] / best["relay_programs"]
    print(f"ratios             {kernel_ratio:.2f}x the bare relay's work in the kernel, "
          f"{program_ratio:.2f}x in the programs")
    if a.json:
        print(json.dumps({"kernel_us": best["kernel"], "kernel_median_us": median["kernel"],
                          "relay_us": best["relay"], "relay_median_us": median["relay"], "ratio": kernel_ratio,
                          "programs_us": best["programs"], "relay_programs_us": best["relay_programs"],
                          "programs_ratio": program_ratio, "chunk": a.chunk}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
