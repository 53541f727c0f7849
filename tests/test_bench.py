"""`make bench` (bench/run.py) in --quick mode: the report is written and complete.

Speeds are not asserted: on a shared 2-core machine they mean nothing at 2 timed steps. What is
checked is that every variant and every target check is in the report with finite, positive
figures, and that both training loops did the same work.
"""

from __future__ import annotations

import math
import re

import pytest

from bench import run


def _table_rows(markdown: str, first_header: str) -> list[list[str]]:
    """Body rows of the Markdown table whose first header cell is `first_header`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:  # skip the header and the |---| line
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _number(cell: str) -> float:
    """The leading number of a cell: '12.3 (11.9-14.0)' -> 12.3, '31,619' -> 31619, '21.6%' -> 21.6."""
    match = re.match(r"[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?", cell)
    assert match, f"no number in {cell!r}"
    return float(match.group().replace(",", ""))


@pytest.mark.slow  # five short training runs, two of them Lightning fits: ~10-20 s on 2 cores
def test_quick_bench_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert run.main(["--quick", "--out", str(out)]) == 0
    md = out.read_text()

    assert f"Command: `python -m bench.run --quick --out {out}`" in md  # the command actually run
    assert "Quick mode" in md
    peak = re.search(r"= \*\*([\d.]+) GFLOP/s\*\*", md)
    assert peak and float(peak.group(1)) > 0

    variants = _table_rows(md, "variant")
    assert [r[0] for r in variants] == [v.label for v in run.VARIANTS]
    for label, ms, tokens, mfu, opt in variants:
        for cell in (ms, tokens, mfu):
            value = _number(cell)
            assert math.isfinite(value) and value > 0, f"{label}: {cell}"
        if label.startswith("bare"):  # the optimiser share is only measured in the bare loop
            assert 0 < _number(opt) < _number(ms)

    checks = _table_rows(md, "check (step-time ratio)")
    assert [r[0] for r in checks] == [c.name for c in run.CHECKS]
    for name, ratio, target, verdict in checks:
        assert math.isfinite(_number(ratio)) and _number(ratio) > 0
        assert verdict in (("PASS", "MISS") if target != "-" else ("-",)), name

    assert "DIFFER" not in md and "Same work check" in md
    # The strong-PTQ arms' cost is measured (a real time, a share of a real run), not assumed.
    ptq = re.search(r"Strong-PTQ arms .*?: ([\d.]+) s .*?= ([\d.]+)% of a default (\d+)-s training run", md)
    assert ptq and float(ptq.group(1)) > 0 and float(ptq.group(2)) > 0 and int(ptq.group(3)) > 0
    assert "## How measured" in md
    # The console gets the same tables.
    assert "Lightning / bare (FP16)" in capsys.readouterr().out


def test_make_command_is_named():
    assert run.command(run.MAKE_ARGS) == "make bench"
    assert run.command(["--presets", "cpu-s"]) == "python -m bench.run --presets cpu-s"
