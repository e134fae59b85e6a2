"""`python -m tests.bench [--quick] [--json PATH] [--only NAME ...]`: run, print, write JSON."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from tests.bench import report, scenarios

SCENARIOS = {"pickup": scenarios.pickup, "concurrency": scenarios.concurrency,
             "backlog": scenarios.backlog}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a few mails per scenario: checks the suite works, measures little")
    parser.add_argument("--json", type=Path, default=Path("bench.json"),
                        help="where to write the figures (default: bench.json here)")
    args = parser.parse_args(argv)
    # aiosmtpd warns on every login about its own API; it says nothing about mailagent.
    warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
    sizes = scenarios.QUICK if args.quick else scenarios.Sizes()
    figures: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for name, run in SCENARIOS.items():
        print(f"running {name}...", file=sys.stderr, flush=True)
        result = run(sizes)
        details[name] = result.pop("samples_ms", None)
        figures.update(result)
    print(report.table(figures))
    report.write(args.json, figures, details, args.quick)
    print(f"\nwritten to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
