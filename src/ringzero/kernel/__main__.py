"""`python -m ringzero.kernel`: the kernel host in the foreground (see `ringzero kernel --help`)."""

import argparse
import sys

from ringzero.kernel.boot import PRIORITY_BOOST, parse_size, run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ringzero.kernel")
    ap.add_argument("--socket")
    ap.add_argument("--state")
    ap.add_argument("--load", action="append", default=[])
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--no-verifier", action="store_true")
    ap.add_argument("--fault-limit", type=int, default=0)
    ap.add_argument("--max-handles", type=int, default=1 << 20)
    ap.add_argument("--max-pending", type=int, default=0)
    ap.add_argument("--max-pool", type=parse_size, default=None)
    ap.add_argument("--max-io-memory", type=parse_size, default=None)
    ap.add_argument("--priority-boost", type=int, default=PRIORITY_BOOST)
    ap.add_argument("--scratch", help="a directory of this kernel's own (its socket's and state's), removed when it stops")
    a = ap.parse_args(argv)
    return run(a.socket, a.load, a.state, a.verbose, a.quiet, not a.no_verifier, a.fault_limit, a.max_handles,
               a.max_pending, a.max_pool, a.max_io_memory, a.priority_boost, a.scratch)


if __name__ == "__main__":
    sys.exit(main())
