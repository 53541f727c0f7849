"""--compare KEY: the within-cell machinery along any swept key (METHOD section 7, "Any axis")."""

from __future__ import annotations

import json

import pytest

from qat_lab.analysis import load, pipeline, report, synthetic
from qat_lab.analysis.cells import CELL_ID
from tests.analysis.conftest import small_planted
from tests.analysis.test_cli import run_main

RULES = ("absmax", "percentile")


def _scale_rule_sweep(tmp_path, effect: dict):
    planted = small_planted(sizes={"m5": 5_000_000, "m20": 20_000_000}, bits=(16, 6, 4), warmdowns=(0.33,),
                            seeds=(0, 1, 2, 3), extra={"quant.scale_rule": RULES},
                            extra_effect={"quant.scale_rule": effect})
    return synthetic.write_sweep(tmp_path, planted, histories=False)


def _compare(sweep, key: str = "quant.scale_rule"):
    return pipeline.analyse(load.load_local([sweep]), pipeline.Options(compare=key, anneal=False, max_plots=0))


def test_a_planted_scale_rule_effect_is_found_in_every_quantised_cell(tmp_path):
    a = _compare(_scale_rule_sweep(tmp_path, {"percentile": -0.01}))
    assert a.key == "quant.scale_rule" and "quant.scale_rule" not in a.along.cell_axes
    q = a.optima[a.optima["bits"] != 16]
    assert len(q) == 4 and set(q["best_quant.scale_rule"]) == {"percentile"}
    c = a.comparisons
    assert len(c) == 4 and set(c["quant.scale_rule"]) == {"absmax"} and c["significant"].all()
    assert c["mean"].to_numpy() == pytest.approx(0.01, abs=0.001) and (c["wins"] == c["n"]).all()
    # FP16 cells have the scale rule as * (it does not apply): one level, nothing compared there.
    fp = a.cells[a.cells["bits"] == 16]
    assert set(fp["quant.scale_rule"].map(str)) == {"*"}
    # The same effect at every bit-width: the optimum does not move, no interaction.
    assert len(a.interaction) == 2
    for g in a.interaction:
        assert g["optimum_by_bits"] == {6: "percentile", 4: "percentile"} and not g["moves"]
        assert g["f_test"]["p"] > 0.05
    text = report.write_report(a, tmp_path / "rep", ["qatlab-analyze", "--compare", "quant.scale_rule"]).read_text()
    assert "## 3. Is the best quant.scale_rule distinguishable from the others?" in text
    assert "quant.scale_rule=percentile" in text  # a column heading of the cells table


def test_no_planted_effect_finds_nothing(tmp_path):
    a = _compare(_scale_rule_sweep(tmp_path, {}))
    c = a.comparisons
    assert len(c) == 4 and not c["significant"].any()
    assert c["mean"].abs().max() < 0.002


def test_an_effect_at_one_bit_width_moves_the_optimum_and_the_interaction_sees_it(tmp_path):
    # percentile helps INT4 and hurts INT6: the optimum moves with bits.
    a = _compare(_scale_rule_sweep(tmp_path, {("percentile", 4): -0.01, ("percentile", 6): 0.01}))
    assert len(a.interaction) == 2
    for g in a.interaction:
        assert g["optimum_by_bits"] == {6: "absmax", 4: "percentile"} and g["moves"]
        assert g["f_test"]["p"] < 1e-6 and g["f_test"]["df_num"] == 1


def test_fp16_cells_join_every_group_of_the_quantiser_setting_they_match(tmp_path):
    # QAT runs vary quant.start; FP16 runs cannot (it is * there). Comparing warmdowns, each
    # quant.start group of cells must still have its FP16 cell.
    planted = small_planted(sizes={"m5": 5_000_000}, bits=(16, 4), warmdowns=(0.1, 0.33), seeds=(0, 1, 2),
                            extra={"quant.start": (0.0, 0.5)})
    a = pipeline.analyse(load.load_local([synthetic.write_sweep(tmp_path, planted, histories=False)]),
                         pipeline.Options(anneal=False, max_plots=0))
    assert a.key == "warmdown" and "quant.start" in a.along.cell_axes
    fp_cells = set(a.cells.loc[a.cells["bits"] == 16, CELL_ID])
    assert len(fp_cells) == 1  # one FP16 cell (two FP16 runs per seed were duplicates)
    assert sorted(g["axes"]["quant.start"] for g in a.interaction) == [0.0, 0.5]
    for g in a.interaction:
        assert fp_cells <= set(g["cells"]) and set(g["optimum_by_bits"]) == {16, 4}
        assert g["f_test"]["df_num"] == 1  # (2 bits - 1) x (2 warmdowns - 1)


def test_the_annealing_law_stays_on_warmdowns_when_another_key_is_compared(tmp_path):
    planted = small_planted(sizes={"m5": 5_000_000}, bits=(16, 4), warmdowns=(0.1, 0.33, 0.5), seeds=(0, 1),
                            extra={"quant.scale_rule": RULES})
    sweep = synthetic.write_sweep(tmp_path, planted)
    a = pipeline.analyse(load.load_local([sweep]), pipeline.Options(compare="quant.scale_rule", max_plots=0,
                                                                    anneal_lambdas=(0.99,)))
    assert a.by_warmdown is not a.along and "warmdown" not in a.by_warmdown.cell_axes
    assert "quant.scale_rule" in a.by_warmdown.cell_axes and "warmdown" in a.along.cell_axes
    # One fit per warmdown cell: FP16 and INT4 x two scale rules.
    assert len(a.cell_laws) == 3 and all(len(cl.curves) == 3 for cl in a.cell_laws)
    fits = json.loads(json.dumps(report.fits_json(a)))
    assert fits["compare"] == "quant.scale_rule" and fits["interaction_warmdown"] is not None


@pytest.mark.parametrize("key,message", [
    ("nope", "--compare nope: not a key that varies among the used runs (neither a sweep axis nor a config key); "
             "keys that vary: model, quant.scale_rule"),
    ("lr_mult", "--compare lr_mult: it does not vary among the used runs (1.0); keys that vary: model, "
                "quant.scale_rule"),
    ("seed", "--compare seed: seed is the replicate every comparison pairs on"),
    ("bits", "--compare bits: bits is what the penalties and the interaction test compare"),
])
def test_a_key_that_does_not_vary_is_one_error_line_listing_those_that_do(tmp_path, capsys, key, message):
    sweep = _scale_rule_sweep(tmp_path, {})
    assert run_main([str(sweep), "--compare", key, "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qatlab-analyze: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()


def test_a_config_key_without_a_column_can_be_compared(tmp_path):
    # model.d_model is no named axis and no extra key (model explains it), but it varies.
    sweep = _scale_rule_sweep(tmp_path, {})
    for path in sweep.rglob("run.json"):
        record = json.loads(path.read_text())
        record["config"]["model"] = {"name": record["axes"]["model"], "d_model": 64 if "m5" in path.parent.name else 128}
        path.write_text(json.dumps(record))
    a = _compare(sweep, "model.d_model")
    assert "model" not in a.along.cell_axes  # the named axis that stands for it goes too
    assert set(a.cells["model.d_model"]) == {64, 128} and len(a.comparisons) > 0


def test_levels_are_compound_where_keys_under_the_compared_one_vary():
    import pandas as pd

    from qat_lab.analysis import design

    t = pd.DataFrame({"used": True, "bits": 4, "seed": 0, "optim": ["adamw", "muon", "muon"],
                      "optim.matrix_lr": [None, 0.02, 0.04]})
    keys = ["bits", "optim", "seed", "optim.matrix_lr"]
    assert design.cell_axes(keys, "optim") == ["bits"]  # optim.* goes with optim
    assert design.compared_levels(t, "optim", keys).tolist() == [
        "adamw (optim.matrix_lr=-)", "muon (optim.matrix_lr=0.02)", "muon (optim.matrix_lr=0.04)"]
    plain = t.assign(**{"optim.matrix_lr": [None, 0.02, 0.02]})  # nothing varies under optim: plain values
    assert design.compared_levels(plain, "optim", keys).tolist() == ["adamw", "muon", "muon"]
    assert design.cell_axes(["bits", "qat_start", "quant.start", "seed"], "quant.start") == ["bits"]


def test_a_cosine_run_belongs_to_the_cell_of_every_warmdown(tmp_path):
    # A cosine schedule has no warmdown window (its warmdown is ANY in the identity): comparing
    # schedules, it is compared with the WSD runs at every warmdown.
    wsd = synthetic.write_sweep(tmp_path, small_planted(sizes={"m5": 5_000_000}, bits=(16,), warmdowns=(0.1, 0.33),
                                                        seeds=(0, 1, 2)), sweep="wsd", histories=False)
    cos = synthetic.write_sweep(tmp_path, small_planted(sizes={"m5": 5_000_000}, bits=(16,), warmdowns=(0.33,),
                                                        seeds=(0, 1, 2)), sweep="cos", histories=False)
    for path in cos.rglob("run.json"):
        record = json.loads(path.read_text())
        record["axes"]["schedule"] = "cosine"
        record["config"]["schedule"]["kind"] = "cosine"
        record["results"]["val_loss"] += 0.01
        path.write_text(json.dumps(record))
    a = pipeline.analyse(load.load_local([wsd, cos]), pipeline.Options(compare="schedule", anneal=False, max_plots=0))
    assert "warmdown" in a.along.cell_axes
    assert set(a.cells["warmdown"]) == {0.1, 0.33}  # the cells are the WSD runs' warmdowns, never '*'
    assert len(a.cells) == 4 and set(a.cells["schedule"]) == {"wsd-linear", "cosine"}
    assert (a.cells["n"] == 3).all()
    c = a.comparisons.set_index(CELL_ID)
    assert len(c) == 2 and c.loc["warmdown=0.33", "best_schedule"] == "wsd-linear"
    assert c.loc["warmdown=0.33", "mean"] == pytest.approx(0.01, abs=0.001)
    # Comparing warmdowns instead, the cosine runs are a cell of their own with one level: '*'.
    b = pipeline.analyse(load.load_local([wsd, cos]), pipeline.Options(anneal=False, max_plots=0))
    cosine = b.cells[b.cells["schedule"] == "cosine"]
    assert len(cosine) == 1 and str(cosine["warmdown"].iloc[0]) == "*"
