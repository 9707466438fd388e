"""`python -m ringzero.kernel`: the kernel host in the foreground (see `ringzero kernel --help`)."""

import argparse
import sys

from ringzero.kernel.boot import run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ringzero.kernel")
    ap.add_argument("--socket")
    ap.add_argument("--state")
    ap.add_argument("--load", action="append", default=[])
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    return run(a.socket, a.load, a.state, a.verbose, a.quiet)


if __name__ == "__main__":
    sys.exit(main())
