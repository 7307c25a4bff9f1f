"""Benchmark 11: how fast the command line answers what needs no model. `simlib --help`, `simlib info` on a saved
collection and an argument error, each in a fresh Python process as a user runs them (`python -m simlib`, the
entry point's own code path), wall-clock seconds, and whether the process imported torch, FAISS or scikit-learn
(`python -X importtime`, a separate run so that its bookkeeping does not count in the time)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from simlib.backbones import load_backbone
from simlib.collection import Collection

from .inputs import ROOT, RunConfig, resnet18_random_weights
from .report import Headline, Section

TARGET_SECONDS = 0.5
HEAVY = ("torch", "faiss", "sklearn")


def run(config: RunConfig) -> Section:
    section = Section("11. Command-line start-up: answers that need no model")
    repeats = config.pick(1, 7)  # quick: each command once (the time of a smoke run is not quoted)
    with tempfile.TemporaryDirectory(prefix="simlib-startup-") as scratch:
        saved = Path(scratch) / "sample.simlib"
        backbone = load_backbone("resnet18", resnet18_random_weights(config), precision="fp32")
        Collection.build(ROOT / "data" / "collection", backbone, progress=False).save(saved)
        commands = {
            "simlib --help": ["--help"],
            "simlib info COLLECTION": ["info", str(saved)],
            "simlib info COLLECTION --json": ["info", str(saved), "--json"],
            "simlib search COLLECTION Q --threshold nan (refused)":
                ["search", str(saved), "q.jpg", "--threshold", "nan"],
            "simlib index /nonexistent -o x.simlib (refused)":
                ["index", "/nonexistent", "-o", str(Path(scratch) / "x.simlib")],
        }
        rows = [_measure(name, argv, repeats) for name, argv in commands.items()] + [_torch_alone(repeats)]
    table = pd.DataFrame(rows)
    section.text(
        f"Each command run {repeats} times in a fresh `{Path(sys.executable).name} -m simlib` process (the bundled "
        f"sample saved as a collection for `info`); median and slowest wall-clock seconds, the exit status, and the "
        f"heavy libraries the process imported (from a separate `-X importtime` run). For comparison, the last row "
        f"imports torch alone."
    )
    section.table(table, floatfmt=".3g")
    light = table[table["command"] != "python -c 'import torch'"]
    slowest = light.loc[light["median s"].idxmax()]
    heavy = sorted({lib for libs in light["imports"] for lib in libs.split(", ") if lib != "none"})
    section.headlines.append(Headline(
        "CLI start-up without a model (--help, info, argument errors), median of the slowest command",
        f"{slowest['median s']:.2f} s ({slowest['command']}); imports {', '.join(heavy) or 'no torch, FAISS or sklearn'}",
        f"<= {TARGET_SECONDS} s, no torch", bool(slowest["median s"] <= TARGET_SECONDS and not heavy)))
    return section


def _measure(name: str, argv: list[str], repeats: int) -> dict:
    prefix = [sys.executable, "-m", "simlib"]
    return _timed(name, prefix + argv, [sys.executable, "-X", "importtime", "-m", "simlib", *argv], repeats)


def _timed(name: str, command: list[str], traced: list[str], repeats: int) -> dict:
    seconds, code = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, cwd=ROOT)
        seconds.append(time.perf_counter() - started)
        code = done.returncode
    trace = subprocess.run(traced, capture_output=True, text=True, cwd=ROOT).stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in trace.splitlines() if line.startswith("import time:")}
    heavy = [lib for lib in HEAVY if lib in imported]
    return {"command": name, "median s": statistics.median(seconds), "slowest s": max(seconds), "exit status": code,
            "imports": ", ".join(heavy) or "none"}


def _torch_alone(repeats: int) -> dict:
    command = [sys.executable, "-c", "import torch"]
    return _timed("python -c 'import torch'", command, [sys.executable, "-X", "importtime", "-c", "import torch"],
                  repeats)
