"""qatlab-analyze: one-line errors with exit 2, and a full run of main() on a synthetic sweep."""

from __future__ import annotations

import json

import pytest

from qat_lab.analysis import cli, synthetic
from tests.analysis.conftest import small_planted


def run_main(args: list[str]) -> int:
    try:
        cli.main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.parametrize("args,message", [
    (["/no/such/sweep"], "/no/such/sweep: no such file or directory"),
    ([], "give sweep dirs or --wandb"),
    (["--wandb", "e/p"], "--wandb needs --group"),
    (["x", "--law-points", "median"], "invalid choice"),
    (["x", "--anneal-lambdas", "1.5"], "--anneal-lambdas must lie in (0, 1)"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert run_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("qatlab-analyze: error: ") and message in err and err.count("\n") == 1


def test_cli_lambda_grid_is_the_annealing_default():
    from qat_lab.analysis.annealing_law import DEFAULT_LAMBDAS

    assert cli.DEFAULT_LAMBDAS == DEFAULT_LAMBDAS


def test_a_dir_without_records_is_an_error(tmp_path, capsys):
    (tmp_path / "empty_sweep").mkdir()
    assert run_main([str(tmp_path / "empty_sweep"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err == f"qatlab-analyze: error: no run records found in {tmp_path / 'empty_sweep'}\n"
    assert not (tmp_path / "rep").exists()


def test_main_writes_the_report_with_holdout_and_anneal_options(tmp_path, capsys):
    planted = small_planted(sizes={"m5": 5_000_000, "m10": 10_000_000, "m20": 20_000_000, "m50": 50_000_000},
                            bits=(16, 6), warmdowns=(0.1, 0.33, 0.5), seeds=(0,))
    sweep = synthetic.write_sweep(tmp_path, planted)
    out = tmp_path / "rep"
    code = run_main([str(sweep), "--out", str(out), "--holdout-sizes", "m50", "--anneal-fit-warmdowns", "0.1", "0.5",
                     "--anneal-lambdas", "0.95", "0.99", "--max-plots", "1"])
    assert code == 0
    assert "24 runs (24 used, 0 left out" in capsys.readouterr().out
    fits = json.loads((out / "fits.json").read_text())
    assert fits["options"]["holdout_sizes"] == [50_000_000]
    law = fits["annealing_laws"][0]
    assert law["fit_on_warmdowns"] == [0.1, 0.5] and law["predicted_warmdowns"] == [0.33]
    assert [r["lambda"] for r in law["lambda_sensitivity"]] == [0.95, 0.99]
    assert law["lambda"] == planted.anneal_lambda  # curves were generated at 0.99
    assert sorted(p.name for p in out.glob("annealing_fit*.png")) == ["annealing_fit.png"]  # 3 of 8 cells
    text = (out / "report.md").read_text()
    assert "`qatlab-analyze " in text and "--holdout-sizes m50" in text
    assert "The figure shows 3 of 8 cells" in text
