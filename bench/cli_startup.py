"""CLI start-up: how long `qatlab` takes to answer when no job runs (part of `make bench`).

    python -m bench.cli_startup --out docs/benchmarks_cli.md

Timed end to end in a subprocess (interpreter start, imports, Hydra composition, validation), the
median of `--repeats` runs each, for the three answers a researcher waits on before any job:
`qatlab --help`, `qatlab --dry-run -m <the README sweep>` (composes all 8 jobs) and a rejected bad
value (`qatlab bits=3.5`, exit 2). The goal is under 1 s each on an idle 2-core machine; torch is
never imported on these paths (tests/test_imports.py holds that), so what is left is Python,
Hydra/OmegaConf and the config check. The machine-state line says how loaded the machine was.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.analysis_bench import calibration

CASES = (
    ("`qatlab --help`", ["--help"], 0),
    ("`qatlab --dry-run -m bits=4,6,8,16 warmdown=0.1,0.33`", ["--dry-run", "-m", "bits=4,6,8,16",
                                                              "warmdown=0.1,0.33"], 0),
    ("`qatlab bits=3.5` (rejected, exit 2)", ["bits=3.5"], 2),
)
TARGET_S = 1.0


def qatlab() -> str:
    """The console script beside this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).with_name("qatlab")
    return str(here) if here.exists() else (shutil.which("qatlab") or "qatlab")


def time_case(args: list[str], expected_rc: int, repeats: int, cwd: Path) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([qatlab(), *args], cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != expected_rc:
            raise RuntimeError(f"qatlab {' '.join(args)} exited {done.returncode}, expected {expected_rc}:\n"
                               f"{done.stderr[-2000:]}")
        if any(cwd.iterdir()):  # none of these may start a job or create an output dir
            raise RuntimeError(f"qatlab {' '.join(args)} created {sorted(p.name for p in cwd.iterdir())}")
    return times


def measure(repeats: int) -> dict:
    calib, load = [calibration()], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:  # nothing may be created, but never in the repo if it were
        rows = [(name, time_case(args, rc, repeats, Path(tmp))) for name, args, rc in CASES]
    calib.append(calibration())
    load.append(os.getloadavg()[0])
    return {"rows": rows, "calibration": calib, "load": load}


def report(res: dict, argv: list[str], repeats: int) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# CLI start-up benchmark", "",
             f"`python -m bench.cli_startup {' '.join(argv)}`, {when}, {platform.node() or 'host'}: "
             f"{os.cpu_count()} CPU(s), Python {platform.python_version()}.", "",
             f"Each command end to end in a subprocess (interpreter start and imports included), median of "
             f"{repeats} (min-max), wall-clock seconds; target under {TARGET_S:.0f} s.", "",
             f"Machine state: 1-minute load average {res['load'][0]:.1f} before, {res['load'][1]:.1f} after; the "
             f"calibration loop (10M Python additions, ~0.4 s CPU on an idle modern core) took "
             f"{res['calibration'][0]:.2f} s and {res['calibration'][1]:.2f} s CPU here.", "",
             "| command | seconds | target |", "|---|---|---|"]
    for name, times in res["rows"]:
        med = statistics.median(times)
        verdict = "PASS" if med <= TARGET_S else "MISS"
        lines.append(f"| {name} | {med:.2f} ({min(times):.2f}-{max(times):.2f}) | {verdict} |")
    lines += ["", "None of these imports torch (tests/test_imports.py): the time is the interpreter, Hydra's "
              "composition of the config (once per distinct job, cached across the sweep's jobs) and the checks.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/benchmarks_cli.md")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    text = report(measure(args.repeats), argv, args.repeats)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
