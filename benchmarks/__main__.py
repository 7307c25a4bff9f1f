"""python -m benchmarks [--quick] [--only NAME ...] [--output PATH] [--cache DIR] [--no-cache] [--ann-sizes N ...]

A full run writes benchmarks/RESULTS.md; a quick run (small sizes, a smoke test) writes build/benchmarks-quick.md,
so it never replaces the quoted results. --output overrides either."""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path

from . import (ann, big_index, copydetect, distributed, duplicates, filters, index_kind, latency, precision, quality,
               scale, startup, throughput)
from .inputs import DEFAULT_CACHE, ROOT, SHARED, RunConfig
from .machine import describe, load_average
from .report import write_results

BENCHMARKS = {
    "throughput": throughput, "ann": ann, "latency": latency, "quality": quality, "filters": filters, "scale": scale,
    "duplicates": duplicates, "precision": precision, "index_kind": index_kind, "copydetect": copydetect,
    "startup": startup, "big_index": big_index, "distributed": distributed,
}
RESULTS = ROOT / "benchmarks" / "RESULTS.md"  # a full run's results, quoted by the README
QUICK_RESULTS = ROOT / "build" / "benchmarks-quick.md"  # a quick run's: git-ignored, never quoted


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of every script")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run these benchmarks only")
    parser.add_argument("--output", type=Path, help=f"where to write the results (default: "
                        f"{RESULTS.relative_to(ROOT)}, or {QUICK_RESULTS.relative_to(ROOT)} with --quick)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where built indexes and inputs are kept")
    parser.add_argument("--no-cache", action="store_true", help="rebuild cached indexes and features")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared datasets folder")
    parser.add_argument("--ann-sizes", type=int, nargs="+", metavar="N",
                        help="synthetic collection sizes of the ANN benchmark (default 10000 1000000; quick 2000)")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = QUICK_RESULTS if args.quick else RESULTS
    if args.ann_sizes and min(args.ann_sizes) < 100:
        parser.error("--ann-sizes: each size must be at least 100 vectors")
    config = RunConfig(quick=args.quick, cache=args.cache, shared=args.shared, use_cache=not args.no_cache,
                       ann_sizes=tuple(args.ann_sizes) if args.ann_sizes else None)
    started, load_before = time.perf_counter(), load_average()
    sections = []
    for name in args.only or BENCHMARKS:
        print(f"== {name}", flush=True)
        section = BENCHMARKS[name].run(config)
        print(section.markdown(level=3), flush=True)
        sections.append(section)
    minutes = (time.perf_counter() - started) / 60
    command = "python -m benchmarks" + (" --quick" if args.quick else "") + (
        f" --only {' '.join(args.only)}" if args.only else ""
    ) + (f" --ann-sizes {' '.join(map(str, args.ann_sizes))}" if args.ann_sizes else "")
    preamble = (
        f"# simlib benchmarks{' (quick smoke run: small sizes, not for quoting)' if args.quick else ''}\n\n"
        f"Written by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {minutes:.1f} minutes. "
        f"Every figure below was measured in that run.\n\n{describe()}\n\n"
        f"Load average (1/5/15 min) at the start: {load_before}; at the end: {load_average()}. A load above the "
        f"number of CPUs means other work shared the machine and the timings are pessimistic."
    )
    write_results(args.output, preamble, sections)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
