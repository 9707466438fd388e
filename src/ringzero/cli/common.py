"""What the CLI commands share: connecting to the kernel, clear errors, JSON."""

from __future__ import annotations

import json
import sys

import click

from ringzero import client


def connect() -> client.Connection:
    try:
        return client.connection()
    except client.KernelNotRunning as e:
        raise click.ClickException(str(e)) from None


def kernel_call(method: str, **args):
    try:
        return connect().call(method, **args)
    except client.CallFailed as e:
        raise click.ClickException(str(e)) from None
    except client.KernelGone as e:
        raise click.ClickException(str(e)) from None


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
