"""The end-of-sweep table (qat_lab.summary): paired penalties, row order, unreadable records."""

from __future__ import annotations

from pathlib import Path

import pytest

from qat_lab import records as runs, summary

BASE_AXES = {"bits": 16, "warmdown": 0.33, "lr_mult": 1.0, "model": "cpu-xs", "optim": "muon", "schedule": "wsd-linear",
             "seed": 0, "steps": 20, "data": "shakespeare", "seq_len": 128, "batch_size": 32}
OTHER_VALUES = {"warmdown": 0.1, "lr_mult": 2.0, "model": "cpu-s", "optim": "adamw", "schedule": "cosine", "seed": 1,
                "steps": 40, "data": "python_stdlib", "seq_len": 64, "batch_size": 16}


def _rec(bits: int = 16, val_loss: float = 2.0, status: str = "completed", **axes) -> dict:
    return {
        "schema_version": runs.SCHEMA_VERSION,
        "status": status,
        "axes": {**BASE_AXES, "bits": bits, **axes},
        "results": {"val_loss": val_loss, "val_bpb": val_loss / 0.6931471805599453, "latent_val_bpb": 2.5,
                    "grid_distance_final": 0.2, "unigram_val_bpb": 4.876543},
        "timing": {"wall_s": 12.34},
    }


def test_penalty_pairs_with_the_matching_fp_run():
    records = [_rec(16, 2.0), _rec(4, 2.3), _rec(6, 2.05), _rec(16, 1.5, seed=1), _rec(4, 1.9, seed=1)]
    pen = summary.penalties(records)
    assert pen[0] == pytest.approx(0.0)
    assert pen[1] == pytest.approx(0.3)
    assert pen[2] == pytest.approx(0.05)
    assert pen[3] == pytest.approx(0.0)
    assert pen[4] == pytest.approx(0.4)  # against the seed-1 baseline, not the seed-0 one


@pytest.mark.parametrize("axis", sorted(OTHER_VALUES))
def test_penalty_needs_a_partner_equal_on_every_other_axis(axis: str):
    records = [_rec(16, 2.0), _rec(4, 2.3, **{axis: OTHER_VALUES[axis]})]
    assert summary.penalties(records) == [pytest.approx(0.0), None]


def test_penalty_none_without_a_completed_partner():
    records = [
        _rec(16, 2.0, status="failed", warmdown=0.1), _rec(4, 2.3, warmdown=0.1),  # partner failed
        _rec(6, 2.1, warmdown=0.5),  # no partner at all
        _rec(16, 2.0), _rec(4, float("nan"), status="diverged"),  # the run itself did not complete
    ]
    assert summary.penalties(records) == [None, None, None, pytest.approx(0.0), None]


def _rows(table: str) -> list[dict[str, str]]:
    lines = table.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_sweep_table_one_row_per_record_sorted_by_bits_then_warmdown():
    records = [_rec(b, 2.0 + (16 - b) * 0.01, warmdown=w) for b in (8, 16, 4) for w in (0.33, 0.1)]
    records.append(_rec(6, 9.9, status="failed", warmdown=0.1))
    rows = _rows(summary.sweep_table(records))
    assert len(rows) == len(records)
    keys = [(int(r["bits"]), float(r["warmdown"])) for r in rows]
    assert keys == sorted(keys)  # numeric: 4 < 6 < 8 < 16, not "16" < "4"
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["bits"] == "6" and failed[0]["penalty"] == "-"
    row_4 = next(r for r in rows if r["bits"] == "4" and r["warmdown"] == "0.330")
    assert float(row_4["penalty"]) == pytest.approx(0.12, abs=1e-4)


def test_sweep_table_shows_varying_axes_only():
    records = [_rec(16, 2.0), _rec(4, 2.3, seed=1)]
    rows = _rows(summary.sweep_table(records))
    assert "seed" in rows[0] and "model" not in rows[0]
    assert summary.sweep_table([]) == "(no run records)"


def test_summarise_sweep_reports_corrupt_records_and_counts(tmp_path: Path):
    records = [_rec(16, 2.0), _rec(4, 2.3), _rec(6, 2.1), _rec(8, 9.0, status="failed")]
    for r in records:
        runs.write_record(tmp_path / f"bits={r['axes']['bits']}", r)
    corrupt = tmp_path / "bits=2" / runs.RECORD_NAME
    corrupt.parent.mkdir()
    corrupt.write_text('{"schema_version": 1, "status": "compl')
    text = summary.summarise_sweep(tmp_path)
    assert summary.LAST_SWEEP["counts"] == {"completed": 3, "failed": 1}
    assert len(summary.LAST_SWEEP["problems"]) == 1 and str(corrupt) in summary.LAST_SWEEP["problems"][0]
    assert summary.LAST_SWEEP["sweep_dir"] == str(tmp_path)
    assert f"unreadable record: {corrupt}" in text
    assert "3 completed" in text and "1 failed" in text
    assert "4.877" in text  # the unigram baseline of the val split
    assert len(_rows(text.split("\n\n")[1])) == len(records)


def test_summarise_empty_sweep_resets_counts(tmp_path: Path):
    summary.LAST_SWEEP.update(counts={"failed": 3})
    text = summary.summarise_sweep(tmp_path)
    assert summary.LAST_SWEEP["counts"] == {}
    assert "runs: none" in text


def _with_config(r: dict, matrix_lr: float) -> dict:
    name = f"bits={r['axes']['bits']},optim.matrix_lr={matrix_lr}"
    return {**r, "job_name": name, "config": {"optim": {"name": "muon", "matrix_lr": matrix_lr}}}


def test_a_swept_config_key_gets_a_column_and_pairs_within_its_value():
    records = [_with_config(_rec(16, 2.0), 0.005), _with_config(_rec(4, 2.3), 0.005),
               _with_config(_rec(16, 2.5), 0.04), _with_config(_rec(4, 2.6), 0.04)]
    rows = _rows(summary.sweep_table(records))
    assert sorted(r["optim.matrix_lr"] for r in rows) == ["0.005", "0.005", "0.04", "0.04"]  # as set, not rounded
    pen = {(r["bits"], r["optim.matrix_lr"]): r["penalty"] for r in rows}
    assert pen == {("16", "0.005"): "0.0000", ("4", "0.005"): "0.3000", ("16", "0.04"): "0.0000",
                   ("4", "0.04"): "0.1000"}


def test_summary_says_why_a_run_has_no_penalty(tmp_path: Path):
    records = [_with_config(_rec(16, 2.0), 0.005), _with_config(_rec(4, 2.3), 0.04)]
    for i, r in enumerate(records):
        runs.write_record(tmp_path / f"job{i}", r)
    text = summary.summarise_sweep(tmp_path)
    assert "no penalty for 1 completed run(s): no completed bits=16 run with the same optim.matrix_lr" in text
