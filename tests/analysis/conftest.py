"""Synthetic sweeps with planted answers (qat_lab.analysis.synthetic), analysed once per session."""

from __future__ import annotations

import pytest

from qat_lab.analysis import load, pipeline, synthetic

SIZES = {"m5": 5_000_000, "m10": 10_000_000, "m20": 20_000_000, "m50": 50_000_000, "m100": 100_000_000}


def small_planted(**kw) -> synthetic.Planted:
    """5 sizes x FP16/INT6/INT4 x 4 warmdowns x 4 seeds = 240 runs, optimum at 0.33.

    Run noise sd 0.0002 against a 0.003 loss step from 0.33 to 0.5: clear enough that every
    comparison survives Holm over 45 tests with 4 seeds (t with 3 dof needs to be large).
    """
    args = dict(sizes=dict(SIZES), bits=(16, 6, 4), warmdowns=(0.1, 0.2, 0.33, 0.5), seeds=(0, 1, 2, 3),
                noise_sd=0.0002)
    args.update(kw)
    return synthetic.Planted(**args)


@pytest.fixture(scope="session")
def synthetic_analysis(tmp_path_factory):
    """(Analysis, Planted) of the small planted sweep, m100 held out of the penalty law."""
    planted = small_planted()
    sweep = synthetic.write_sweep(tmp_path_factory.mktemp("synth"), planted, histories=False)
    runset = load.load_local([sweep])
    return pipeline.analyse(runset, pipeline.Options(holdout=["m100"], anneal=False)), planted


@pytest.fixture(scope="session")
def synthetic_analysis_seeds(tmp_path_factory):
    """The same planted law, seed-level points, INT6 only."""
    planted = small_planted(bits=(16, 6), warmdowns=(0.33,))
    sweep = synthetic.write_sweep(tmp_path_factory.mktemp("synth_seeds"), planted, histories=False)
    runset = load.load_local([sweep])
    return pipeline.analyse(runset, pipeline.Options(holdout=["m100"], law_points="seeds", anneal=False)), planted
