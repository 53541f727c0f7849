"""The LR-annealing law: areas on every step, parameter recovery on curves made by the law itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qat_lab.analysis import annealing_law as al
from qat_lab.analysis import cell_fit
from qat_lab.schedules import ScheduleConfig

TRUE = {"L0": 1.6, "A": 2.5, "alpha": 0.5, "C": 0.002}
LAM = 0.99


def naive_areas(eta, lam):
    """METHOD section 8 written out literally, one step at a time."""
    s1, s2, m, out1, out2 = 0.0, 0.0, 0.0, [0.0], [0.0]
    for i, e in enumerate(eta):
        m = lam * m + ((eta[i - 1] - e) if i else 0.0)
        s1 += e
        s2 += m
        out1.append(s1)
        out2.append(s2)
    return np.array(out1), np.array(out2)


def curve(warmdown: float, steps: int = 300, params=TRUE, lam=LAM, warmup: int = 0, noise: float = 0.0, seed: int = 0):
    sched = ScheduleConfig(warmdown=warmdown, warmup_steps=warmup)
    eta = al._peak_warmup(np.asarray(sched.trace(steps)), warmup, 1.0)
    s1, s2 = al.areas(eta, lam)
    loss = np.full(steps, np.nan)
    loss[1:] = al.law(params, s1[1:steps], s2[1:steps])
    if warmup:  # what the model sees during warmup is not the law's business: garbage there
        loss[1:warmup] = 9.0
    if noise:
        loss *= np.exp(np.random.default_rng(seed).normal(0, noise, steps))
    return al.Curve(warmdown, loss, al.Trace(eta, warmup, "config"), 1)


def test_areas_match_the_definition_step_by_step():
    eta = np.asarray(ScheduleConfig(warmdown=0.4, decay_shape="cosine").trace(97)) * 0.7
    for lam in (0.9, 0.999):
        s1, s2 = al.areas(eta, lam)
        r1, r2 = naive_areas(eta, lam)
        np.testing.assert_allclose(s1, r1, rtol=1e-13)
        np.testing.assert_allclose(s2, r2, rtol=1e-11, atol=1e-12)


def test_fit_recovers_the_planted_parameters_from_noise_free_curves():
    fit = al.fit_law([curve(0.0), curve(0.5)], LAM)
    assert fit.success, fit.message
    for k, v in TRUE.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-5), k
    assert fit.objective < 1e-10


def test_fit_cell_picks_the_true_lambda_predicts_held_out_curves_and_the_optimum():
    curves = [curve(w) for w in (0.0, 0.1, 0.33, 0.5, 1.0)]
    cl = cell_fit.fit_cell("c", curves, ScheduleConfig(), 300, 1.0, empirical_optimum=None,
                     lambdas=(0.95, 0.99, 0.999))
    assert cl.fit_warmdowns == [0.0, 1.0] and cl.heldout_warmdowns == [0.1, 0.33, 0.5]
    assert cl.best_lam == LAM and cl.best.success
    row = next(r for r in cl.by_lambda if r["lambda"] == LAM)
    assert row["heldout"]["r2"] == pytest.approx(1.0, abs=1e-9) and row["heldout"]["mae"] < 1e-6
    # The predicted optimum is the argmin over the candidate grid of the true law's final loss.
    finals = {f: al.law(TRUE, *(a[-1] for a in al.areas(np.asarray(ScheduleConfig(warmdown=f).trace(300)), LAM)))
              for f in al.CANDIDATE_FRACTIONS}
    assert row["predicted_optimum"] == min(finals, key=finals.get)
    assert [r["lambda"] for r in cl.by_lambda] == [0.95, 0.99, 0.999]
    assert cl.to_json()["params"]["C"] == pytest.approx(TRUE["C"], rel=1e-5)


def test_noisy_curves_still_recover_parameters_within_noise():
    fit = al.fit_law([curve(0.0, noise=0.01, seed=1), curve(0.5, noise=0.01, seed=2)], LAM)
    assert fit.success
    assert fit.params["L0"] == pytest.approx(TRUE["L0"], rel=0.05)
    assert fit.params["C"] == pytest.approx(TRUE["C"], rel=0.25)


def test_only_post_warmup_points_are_fitted_and_warmup_counts_at_peak():
    c = curve(0.3, warmup=20)
    k, s1, _, _ = c.points(LAM)
    assert k[0] == 20
    assert s1[0] == pytest.approx(20.0)  # 20 warmup steps counted at peak LR (1.0)
    fit = al.fit_law([c, curve(0.0, warmup=20)], LAM)  # the garbage during warmup is never seen
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], rel=1e-4)


def test_lr_trace_from_config_and_from_logged_lrs_agree():
    record = {"axes": {"steps": 50, "lr_mult": 2.0},
              "config": {"schedule": {"_target_": "qat_lab.schedules.ScheduleConfig", "kind": "wsd", "warmdown": 0.3,
                                      "decay_shape": "linear", "warmup_steps": 5, "final_lr_frac": 0.1}}}
    mult = np.asarray(ScheduleConfig(warmdown=0.3, warmup_steps=5, final_lr_frac=0.1).trace(50))
    hist = pd.DataFrame({"step": np.arange(51.0), "train_loss": 2.0,
                         "lr/muon/matrices": np.r_[0.02 * 2.0 * mult, np.nan]})
    from_config = al.lr_trace(record, hist)
    assert from_config.source == "config" and from_config.note == ""
    assert from_config.warmup == 5
    np.testing.assert_allclose(from_config.eta[5:], 2.0 * mult[5:])
    assert (from_config.eta[:5] == 2.0).all()  # warmup at peak (lr_mult x 1)
    from_log = al.lr_trace({"axes": record["axes"]}, hist)
    assert from_log.source == "metrics.csv lr/muon/matrices"
    np.testing.assert_allclose(from_log.eta, from_config.eta, rtol=1e-12)
    hist.loc[30, "lr/muon/matrices"] *= 1.5  # a schedule the config does not describe
    assert "differs" in al.lr_trace(record, hist).note


def test_cell_curves_average_seeds_and_skip_incomplete_histories():
    sched = {"_target_": "x", "kind": "wsd", "warmdown": 0.5, "decay_shape": "linear", "warmup_steps": 0,
             "final_lr_frac": 0.0}
    records = {f"r{i}": {"axes": {"steps": 10, "lr_mult": 1.0}, "config": {"schedule": sched}} for i in range(3)}
    hists = {"r0": pd.DataFrame({"step": np.arange(11.0), "train_loss": np.r_[np.full(10, 2.0), np.nan]}),
             "r1": pd.DataFrame({"step": np.arange(11.0), "train_loss": np.r_[np.full(10, 4.0), np.nan]}),
             "r2": pd.DataFrame({"step": np.arange(5.0), "train_loss": 1.0})}  # stopped at step 4
    runs = pd.DataFrame({"run_id": ["r0", "r1", "r2"], "warmdown": 0.5, "steps": 10})
    curves, notes = cell_fit.cell_curves(runs, records, hists.get)
    assert len(curves) == 1 and curves[0].n_seeds == 2
    np.testing.assert_allclose(curves[0].loss, 3.0)
    assert notes == ["r2: incomplete train_loss history"]


def _cell_law(at_bound: bool, optima: list[float]) -> cell_fit.CellLaw:
    """A CellLaw with a chosen fit (a parameter at its bound or not) and these predicted optima per lambda."""
    params = {"L0": 0.0 if at_bound else 1.5, "A": 2.0, "alpha": 0.4, "C": 0.01}
    fit = al.Fit(params=params, lam=0.99, objective=1.0, success=True, message="", n_starts=2, n_converged=2,
                 n_points=100)
    cl = cell_fit.CellLaw(cell="c", fit_warmdowns=[0.1], heldout_warmdowns=[0.5], curves=[], fits={0.99: fit}, best_lam=0.99)
    cl.by_lambda = [{"lambda": lam, "predicted_optimum": o} for lam, o in zip((0.9, 0.95, 0.99), optima)]
    return cl


@pytest.mark.parametrize("at_bound,optima,undetermined", [
    (True, [0.12, 0.5, 1.0], True),      # the case: L0 pinned at 0, optimum 0.12 -> 1.0 across lambda
    (True, [0.32, 0.34, 0.34], False),   # at the bound, but the optimum moves by one grid step only
    (False, [0.12, 0.5, 1.0], False),    # sensitive to lambda, but nothing pinned: reported with its range
    (True, [0.3, 0.3, 0.3], False),
])
def test_the_predicted_optimum_is_undetermined_only_when_pinned_and_moving(at_bound, optima, undetermined):
    reason = _cell_law(at_bound, optima).undetermined
    assert bool(reason) == undetermined
    if undetermined:
        assert reason == "L0 at bound 0 and the predicted optimum moves from 0.12 to 1 across the λ grid"


def test_the_report_marks_a_degenerate_fit_as_undetermined(tmp_path):
    import json

    from qat_lab.analysis import load, pipeline, report, synthetic
    from tests.analysis.conftest import small_planted

    # A pure power law (L0 = 0) on 40 steps with a strong annealing term: the fit pins L0 at 0 and
    # its optimum moves with lambda (found by a scan of planted laws, on the fixed λ grid).
    planted = small_planted(sizes={"m5": 5_000_000}, bits=(16,), warmdowns=(0.1, 0.33, 0.5), seeds=(0, 1), steps=40,
                            anneal={"L0": 0.0, "A": 3.0, "alpha": 0.3, "C": 0.01})
    a = pipeline.analyse(load.load_local([synthetic.write_sweep(tmp_path, planted)]),
                         pipeline.Options(max_plots=0, anneal_lambdas=al.DEFAULT_LAMBDAS))
    (cl,) = a.cell_laws
    assert "L0" in cl.best.at_bound and cl.optimum_range[1] - cl.optimum_range[0] > al.CANDIDATE_STEP
    assert cl.undetermined.startswith("L0 at bound 0 and the predicted optimum moves from")
    path = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"])
    text = path.read_text()
    assert "*undetermined*" in text and "**Predicted optimum undetermined** in 1 of 1 cell(s)" in text
    assert "predicted optimum undetermined in 1" in text
    assert "matches the empirical one" not in text  # two seeds, but a degenerate fit is no evidence
    fits = json.loads((path.parent / "fits.json").read_text())
    assert fits["annealing_laws"][0]["predicted_optimum_undetermined"] == cl.undetermined


def test_a_match_with_the_empirical_optimum_is_not_claimed_from_one_seed(tmp_path):
    from qat_lab.analysis import load, pipeline, report, synthetic
    from tests.analysis.conftest import small_planted

    planted = small_planted(sizes={"m5": 5_000_000}, bits=(16,), warmdowns=(0.1, 0.33, 0.5), seeds=(0,))
    a = pipeline.analyse(load.load_local([synthetic.write_sweep(tmp_path, planted)]),
                         pipeline.Options(max_plots=0, anneal_lambdas=(0.99,)))
    assert a.cell_laws and not a.cell_laws[0].undetermined
    text = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).read_text()
    assert "agreement with the empirical optimum not testable (one seed per cell" in text
    assert "matches the empirical one in" not in text


# ------------------------------------------------------------------------------ both laws, λ grid, loss column

def test_lambda_grid_scales_with_the_run_length():
    # tau = T x (0.01, 0.03, 0.1, 0.3): lambda = 1 - 1/tau; tau <= 1 is dropped, duplicates merged.
    assert al.scaled_lambdas(1000) == pytest.approx((0.9, 1 - 1 / 30, 0.99, 1 - 1 / 300))
    assert al.scaled_lambdas(50) == pytest.approx((1 - 1 / 1.5, 1 - 1 / 5, 1 - 1 / 15))
    assert all(0 < lam < 1 for lam in al.scaled_lambdas(20_000))
    cl = cell_fit.fit_cell("c", [curve(0.0), curve(0.5)], ScheduleConfig(warmdown=0.5), 300, 1.0, None, with_mpl=False)
    assert sorted(cl.fits) == list(al.scaled_lambdas(300)) == list(cl.lambdas)


def test_both_laws_are_fitted_and_the_better_one_on_held_out_curves_is_used():
    from tests.analysis.test_multipower_law import curve as mpl_curve

    # Curves made by the Multi-Power Law: it predicts the held-out final loss better than Tissue's.
    mpl_made = [mpl_curve(w, noise=0.0005, seed=i) for i, w in enumerate((0.0, 0.2, 0.5))]
    cl = cell_fit.fit_cell("mpl-made", mpl_made, ScheduleConfig(warmdown=0.5, warmup_steps=20), 1000, 1e-3, None)
    assert cl.heldout_warmdowns == [0.2] and set(cl.heldout_error) == {"tissue", "mpl"}
    assert cl.heldout_error["mpl"] < cl.heldout_error["tissue"] and cl.law_used == "mpl"
    assert cl.predicted_optimum == cl.mpl_optimum
    # Curves made by Tissue's law: it predicts them to the noise level.
    tissue_made = [curve(w, noise=0.0005, seed=i) for i, w in enumerate((0.0, 0.2, 0.5))]
    cl = cell_fit.fit_cell("tissue-made", tissue_made, ScheduleConfig(warmdown=0.5), 300, 1.0, None, lambdas=(0.95, LAM))
    assert cl.heldout_error["tissue"] < 2e-3 and cl.mpl is not None
    assert cl.predicted_optimum == (cl.mpl_optimum if cl.law_used == "mpl" else cl.chosen["predicted_optimum"])
    # Without a held-out curve there is nothing to judge by: the simpler law.
    cl = cell_fit.fit_cell("none", tissue_made[::2], ScheduleConfig(warmdown=0.5), 300, 1.0, None, fit_warmdowns=[0.0, 0.5])
    assert cl.law_used == "tissue" and np.isnan(cl.heldout_error["tissue"])


def test_curve_loss_is_fitted_where_runs_log_it(tmp_path):
    from qat_lab.analysis import load, pipeline, synthetic

    for every, column in ((10, "curve_loss"), (0, "train_loss")):
        planted = synthetic.Planted(sizes={"m5": 5_000_000}, bits=(16,), warmdowns=(0.1, 0.33, 0.5), seeds=(0, 1),
                                    curve_noise=0.003, curve_every=every)
        sweep = synthetic.write_sweep(tmp_path / column, planted)
        a = pipeline.analyse(load.load_local([sweep]), pipeline.Options(max_plots=0, anneal_lambdas=(0.99,)))
        (cl,) = a.cell_laws
        assert cl.column == column and cl.to_json()["loss_column"] == column
        if column == "curve_loss":  # every 10 steps, the warmdown start and after the last step (row T)
            (c,) = [c for c in cl.curves if c.warmdown == 0.5]
            assert len(c.loss) == 151 and c.final_point()[0] == 150 and np.isfinite(c.loss).sum() == 16
            # 10x less noise than the train loss: the planted law comes back closely
            assert cl.best.params["alpha"] == pytest.approx(planted.anneal["alpha"], rel=0.1)


def test_the_report_shows_both_laws_and_flags_an_optimum_at_the_edge(tmp_path):
    from qat_lab.analysis import load, pipeline, report, synthetic

    # A strong annealing term: the law's optimum is the longest warmdown, 1.0 (the edge).
    planted = synthetic.Planted(sizes={"m5": 5_000_000}, bits=(16,), warmdowns=(0.1, 0.33, 0.5), seeds=(0, 1),
                                anneal={"L0": 1.6, "A": 2.5, "alpha": 0.5, "C": 0.01}, curve_every=10)
    a = pipeline.analyse(load.load_local([synthetic.write_sweep(tmp_path, planted)]), pipeline.Options(max_plots=0))
    (cl,) = a.cell_laws
    assert cl.predicted_optimum == 1.0 and "edge of the candidate grid (warmdown 1)" in cl.edge_flags[0]
    text = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).read_text()
    assert "held-out final error Tissue / MPL" in text and "law used" in text
    assert "**At the edge** in 1 of 1 cell(s)" in text and "curve_loss" in text
