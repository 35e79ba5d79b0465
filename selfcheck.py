"""Report this machine for a bug report and check every accelerated path against its reference.

Usage:
    python selfcheck.py              # versions, devices, what each job runs here and why, quick checks (< 1 min)
    python selfcheck.py --full       # also the compiled TV-L1 port and FVD's reference example on a CPU
    python selfcheck.py --json       # the same as one JSON object: attach it to a bug report

One line per check: PASS, FAIL or SKIPPED (reason). Exit status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from src.cli import Parser
from src.selfcheck import format_report, run_selfcheck


def main() -> int:
    parser = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true",
                        help="add the slower checks: the compiled TV-L1 port, FVD's reference example on a CPU")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    report = run_selfcheck(full=args.full)
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
