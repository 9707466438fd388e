"""`ringzero dbgview`: the kernel's debug log, live, like DebugView."""

from __future__ import annotations

import json
import time

import click

from ringzero.cli.common import connect, json_option
from ringzero.cli.app import main
from ringzero.protocol.wire import Kind


def _line(rec: dict) -> str:
    t = time.strftime("%H:%M:%S", time.localtime(rec["time"])) + f".{int(rec['time'] * 1000) % 1000:03d}"
    return f"{t}  [{rec['pid']:>6}] {rec['source']}: {rec['text']}"


@main.command()
@click.option("--history", default=50, show_default=True, help="How many recent lines to show first.")
@click.option("--count", type=int, default=None, help="Stop after this many new lines (default: run until Ctrl-C).")
@json_option
def dbgview(history, count, as_json) -> None:
    """Print the kernel's debug log (DbgPrint/KdPrint, faults, leaks) live, with time and pid."""
    conn = connect()
    pushes: list = []
    payload = json.dumps({"method": "dbg.subscribe", "args": {"history": history}}).encode()
    rid, slot = conn.start(Kind.CALL, payload, push=pushes)
    conn.wait(slot)
    body = json.loads(slot.data or b"{}")
    if slot.status & 0xC0000000 == 0xC0000000:
        raise click.ClickException(body.get("message", "dbgview failed"))
    seen = set()

    def show(rec):
        if rec["seq"] in seen:
            return
        seen.add(rec["seq"])
        click.echo(json.dumps(rec) if as_json else _line(rec))

    for rec in body["result"]["history"]:
        show(rec)
    shown = 0
    conn._slots[rid] = slot  # keep receiving PUSH frames on the subscription
    slot.done = False
    try:
        while count is None or shown < count:
            while pushes:
                show(json.loads(pushes.pop(0)))
                shown += 1
                if count is not None and shown >= count:
                    return
            conn.wait(slot, timeout=0.5)
            if conn.closed:
                raise click.ClickException("the kernel went away")
    except KeyboardInterrupt:
        pass
