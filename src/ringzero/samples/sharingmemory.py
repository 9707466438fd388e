"""The SharingMemory program: reads the time a driver keeps in a page of our memory.

It opens \\\\.\\slSharingMemory, asks for the driver's page with
IOCTL_GIVE_ME_YOUR_MEMORY, and from then on reads the 8-byte LARGE_INTEGER at
the returned address straight from its own memory (no kernel call) once a
second, printing it as local date and time, like the seed's dialog.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import struct
import sys
import time

import click

from ringzero import client
from ringzero.nt.ioctl import CTL_CODE, FILE_DEVICE_UNKNOWN, FILE_READ_ACCESS, METHOD_BUFFERED
from ringzero.win32 import pywintypes, win32con, win32file

DEVICE = r"\\.\slSharingMemory"
DRIVER_MODULE = "ringzero.drivers.sharingmemory"
IOCTL_GIVE_ME_YOUR_MEMORY = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS)
EPOCH_1601 = datetime.datetime(1601, 1, 1)


def local_time_of(quad: int) -> datetime.datetime:
    """A LARGE_INTEGER of local time (100 ns since 1601) as a naive datetime."""
    return EPOCH_1601 + datetime.timedelta(microseconds=quad // 10)


def read_shared_time(address: int) -> int:
    return ctypes.c_int64.from_address(address).value


def run(seconds: int, as_json: bool, out=sys.stdout) -> int:
    client.ensure_kernel()
    client.ensure_driver("SharingMemory", DRIVER_MODULE)
    try:
        h = win32file.CreateFile(DEVICE, win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
    except pywintypes.error as e:
        print(f"Device is not present. ({e.strerror})", file=sys.stderr)
        return 1
    try:
        address = struct.unpack("<Q", win32file.DeviceIoControl(h, IOCTL_GIVE_ME_YOUR_MEMORY, None, 8))[0]
    except pywintypes.error as e:
        print(f"Can't send control code to device. ({e.strerror})", file=sys.stderr)
        h.Close()
        return 1
    conn = client.connection()
    before = conn.requests_sent
    samples = []
    if not as_json:
        print(f"Shared page mapped at {address:#x}; reading the driver's time from it once a second", file=out)
    for i in range(seconds):
        raw = read_shared_time(address)
        sample = {"raw": raw, "local_time": local_time_of(raw).isoformat(sep=" ", timespec="seconds"),
                  "wall_clock": time.time()}
        samples.append(sample)
        if not as_json:
            print(f"{sample['local_time']}", file=out, flush=True)
        if i + 1 < seconds:
            time.sleep(1)
    requests_while_reading = conn.requests_sent - before
    h.Close()
    if as_json:
        json.dump({"address": address, "samples": samples, "requests_while_reading": requests_while_reading,
                   "utc_offset_seconds": time.localtime().tm_gmtoff}, out)
        out.write("\n")
    return 0


def demo(console) -> None:
    """The demo's scene: map the page, watch the driver's timer write into it."""
    client.ensure_driver("SharingMemory", DRIVER_MODULE)
    h = win32file.CreateFile(DEVICE, win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
    address = struct.unpack("<Q", win32file.DeviceIoControl(h, IOCTL_GIVE_ME_YOUR_MEMORY, None, 8))[0]
    console.print(f"DeviceIoControl(IOCTL_GIVE_ME_YOUR_MEMORY) -> the driver's page is at {address:#x} in this program")
    conn = client.connection()
    before = conn.requests_sent
    for _ in range(3):
        raw = read_shared_time(address)
        console.print(f"  read from {address:#x}: {raw:#018x} = [bold]{local_time_of(raw):%Y-%m-%d %H:%M:%S}[/bold]")
        time.sleep(1)
    console.print(f"kernel requests made while reading: {conn.requests_sent - before}")
    h.Close()
    console.print("CloseHandle -> IRP_MJ_CLEANUP in this program's context: view unmapped, MDL and page freed")


@click.command(name="sharingmemory")
@click.option("--seconds", default=5, show_default=True, help="How many seconds to read the time for.")
@click.option("--json", "as_json", is_flag=True, help="Print the address and every sample as JSON.")
def cli(seconds: int, as_json: bool) -> None:
    """Map the SharingMemory driver's page and read the time it keeps there."""
    sys.exit(run(seconds, as_json))


if __name__ == "__main__":
    cli()
