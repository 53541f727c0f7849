"""The CLI start-up benchmark runs the real console script and reports every case (the numbers
themselves belong in docs/benchmarks_cli.md, not in a test)."""

from __future__ import annotations

import re

import pytest

from bench import cli_startup


@pytest.mark.slow  # three real qatlab invocations: ~3-6 s
def test_startup_bench_times_every_case_and_checks_exit_codes(tmp_path):
    out = tmp_path / "cli.md"
    assert cli_startup.main(["--repeats", "1", "--out", str(out)]) == 0
    md = out.read_text()
    rows = re.findall(r"^\| (`qatlab[^|]*) \| ([\d.]+) \(", md, flags=re.M)
    assert [name for name, _ in rows] == [name for name, _, _ in cli_startup.CASES]
    assert all(float(s) > 0 for _, s in rows)
    assert "Machine state" in md


def test_a_wrong_exit_code_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="exited 2, expected 0"):
        cli_startup.time_case(["bits=3.5"], 0, 1, tmp_path)


def test_a_file_left_in_the_working_dir_is_an_error(tmp_path):
    (tmp_path / "outputs").mkdir()  # what a job that ran would leave behind
    with pytest.raises(RuntimeError, match="created"):
        cli_startup.time_case(["--help"], 0, 1, tmp_path)
