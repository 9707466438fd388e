"""`ringzero obj`, `ringzero handles`, `ringzero poolmon`: the kernel's
namespace, handle tables and pool, as WinObj, handle.exe and poolmon show them."""

from __future__ import annotations

import time

import click

from ringzero.cli.app import main
from ringzero.cli.common import json_option, kernel_call, print_json
from ringzero.nt import access as acc


def _object_line(d: dict, width: int) -> str:
    extra = ""
    if d["type"] == "SymbolicLink":
        extra = d.get("target") or "(root)"
    elif d["type"] == "Device":
        extra = d.get("driver", "")
        if d.get("open_files"):
            extra += f"  ({d['open_files']} open)"
    elif d["type"] == "Driver":
        extra = ", ".join(d.get("devices") or []) or "(no devices)"
    elif d["type"] == "Event":
        extra = d["event_type"] + (", signalled" if d["signalled"] else "")
    elif d["type"] == "Mutant":
        owner = d.get("owner")
        extra = ("free" if not owner else "owned by a kernel thread" if "pid" not in owner
                 else f"owned by pid {owner['pid']} thread {owner['tid']} ({d['depth']}x)")
    return f"{d['name']:<{width}}  {d['type']:<13} {extra}".rstrip()


@main.command()
@click.argument("path", default="\\", required=False)
@json_option
def obj(path, as_json) -> None:
    """The object namespace at PATH (default \\), like WinObj: directories,
    devices with their driver, symbolic links with their targets, events."""
    d = kernel_call("obj.list", path=path)
    if as_json:
        print_json(d)
        return
    if d["type"] != "Directory":
        click.echo(_object_line({**d, "name": d["path"] or path}, len(d["path"] or path)))
        return
    children = d.get("children", [])
    click.echo(f"Directory of {d['path'] or path}\n")
    width = max([len("Name")] + [len(c["name"]) for c in children])
    click.echo(f"{'Name':<{width}}  {'Type':<13} SymLink / Driver / State")
    for c in children:
        click.echo(_object_line(c, width))
    click.echo(f"\n{len(children)} object(s)")


def _letters(access: int, type_name: str) -> str:
    if type_name != "File":
        return ""
    return "(" + "".join(ch if access & bit else "-" for ch, bit in
                         (("R", acc.FILE_READ_DATA), ("W", acc.FILE_WRITE_DATA), ("D", acc.DELETE))) + ")"


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1 << 20 or n % (1 << 20) else f"{n >> 20:,} MiB"


@main.command()
@click.option("--pid", type=int, help="Only this program's handles.")
@json_option
def handles(pid, as_json) -> None:
    """Open handles of each program, like handle.exe: value, type, granted
    access and name, and for a synchronous file handle whether a request is in
    progress on it ("busy") and how many more wait for it; and how much of the
    program's quota its handles and outstanding requests hold (--max-io-memory).
    Other users' programs are shown to administrators only."""
    procs = kernel_call("handles.list", pid=pid)
    if as_json:
        print_json(procs)
        return
    if pid is not None and not procs:
        raise click.ClickException(f"no program with pid {pid} is connected to the kernel (or it is not yours)")
    for p in procs:
        click.echo("-" * 78)
        click.echo(f"{p['image'] or '?'} pid: {p['pid']} uid: {p['uid']}"
                   + (f"  ({p['pending_irps']} IRPs pending)" if p.get("pending_irps") else "")
                   + f"  quota: {_kib(p['quota_used'])} of {_kib(p['quota'])} used")
        for h in p["handles"]:
            busy = ""
            if h.get("busy"):
                busy = "  [busy" + (f", {h['waiters']} waiting]" if h.get("waiters") else "]")
            click.echo(f"{h['handle']:>6X}: {h['type']:<12} {h['access']:#010x} {_letters(h['access'], h['type']):<5} "
                       f"{h['name'] or ''}".rstrip() + busy)
    click.echo("-" * 78)
    click.echo(f"{sum(len(p['handles']) for p in procs)} handle(s) in {len(procs)} program(s)")


SORT_KEYS = {"tag": lambda r: r["tag"], "bytes": lambda r: -r["bytes"], "allocs": lambda r: -r["allocs"],
             "diff": lambda r: -r["diff"]}


def _pool_rows(sort: str) -> list[dict]:
    return sorted(kernel_call("pool.stats"), key=SORT_KEYS[sort])


def _pool_total() -> str:
    p = kernel_call("kernel.info")["pool"]
    return f"pool in use: {p['in_use']} of {p['limit']} bytes (ringzero kernel --max-pool)"


def _pool_table(rows: list[dict], previous: dict):
    from rich.table import Table
    t = Table(title=f"ringzero poolmon  {time.strftime('%H:%M:%S')}", title_justify="left",
              caption=_pool_total(), caption_justify="left")
    for col, just in (("Tag", "left"), ("Type", "left"), ("Allocs", "right"), ("Frees", "right"),
                      ("Diff", "right"), ("Bytes", "right"), ("Driver", "left")):
        t.add_column(col, justify=just)
    for r in rows:
        before = previous.get((r["tag"], r["type"]))
        changed = before is not None and (before["allocs"], before["frees"]) != (r["allocs"], r["frees"])
        style = "bold yellow" if changed else None
        t.add_row(r["tag"], r["type"], str(r["allocs"]), str(r["frees"]), str(r["diff"]), str(r["bytes"]),
                  ", ".join(r["drivers"]) or "-", style=style)
    return t


def _pool_text(rows: list[dict]) -> str:
    lines = [f"{'Tag':<5} {'Type':<5} {'Allocs':>8} {'Frees':>8} {'Diff':>8} {'Bytes':>10}  Driver"]
    lines += [f"{r['tag']:<5} {r['type']:<5} {r['allocs']:>8} {r['frees']:>8} {r['diff']:>8} {r['bytes']:>10}  "
              f"{', '.join(r['drivers']) or '-'}" for r in rows]
    return "\n".join(lines + [_pool_total()])


@main.command()
@click.option("--sort", type=click.Choice(sorted(SORT_KEYS)), default="bytes", show_default=True,
              help="Order of the rows.")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--count", type=int, default=None, help="Stop after this many refreshes (default: until Ctrl-C).")
@json_option
def poolmon(sort, interval, once, count, as_json) -> None:
    """Pool allocations by tag, pool type and driver (allocations, frees, their
    difference, bytes in use), refreshed live like poolmon; rows that changed
    since the last refresh are highlighted."""
    if as_json or once:
        rows = _pool_rows(sort)
        print_json(rows) if as_json else click.echo(_pool_text(rows))
        return
    from rich.live import Live
    previous: dict = {}
    shown = 0
    try:
        with Live(_pool_table(_pool_rows(sort), previous), refresh_per_second=4, auto_refresh=False) as live:
            while count is None or shown < count:
                rows = _pool_rows(sort)
                live.update(_pool_table(rows, previous), refresh=True)
                previous = {(r["tag"], r["type"]): r for r in rows}
                shown += 1
                if count is None or shown < count:
                    time.sleep(interval)
    except KeyboardInterrupt:
        pass
