"""`python -m tests.bench [--quick] [--json PATH] [--only NAME ...]`: run, print, write JSON."""

from __future__ import annotations

import argparse
import logging
import sys
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
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append",
                        help="only this scenario (repeatable): raw figures, no JSON")
    args = parser.parse_args(argv)
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    sizes = scenarios.QUICK if args.quick else scenarios.Sizes()
    figures: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for name, run in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        print(f"running {name}...", file=sys.stderr, flush=True)
        result = run(sizes)
        details[name] = result.pop("samples_ms", None)
        figures.update(result)
    if args.only:
        print("\n".join(f"{key}: {value}" for key, value in figures.items()))
        return 0
    print(report.table(figures))
    report.write(args.json, figures, details, args.quick)
    print(f"\nwritten to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
