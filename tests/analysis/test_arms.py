"""The QAT-start / PTQ arms table: each arm comes from the right runs and columns, the best late
start is the lowest seed mean, and the paired comparisons have the right sign."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qat_lab.analysis import arms
from qat_lab.records.identity import ANY

SEEDS = (0, 1, 2)


def _table() -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for bits, base in ((4, 2.0), (6, 1.8)):
        for seed in SEEDS:
            noise = rng.normal(0, 1e-3)
            for level, loss in (("init", base + 0.05), ("0.5", base + 0.03), ("0.85", base + 0.01)):
                rows.append({"bits": bits, "qat_start": level, "seed": seed, "val_loss": loss + noise,
                             "latent_val_loss": loss, "used": True})
            # The never arm: trained unquantised; its PTQ columns hold the post-training quantisers.
            rows.append({"bits": bits, "qat_start": "never", "seed": seed, "val_loss": base + 0.04 + noise,
                         "latent_val_loss": base - 0.02 + noise, f"ptq_clip{bits}_val_loss": base + 0.02 + noise,
                         f"ptq_gptq{bits}_val_loss": base + 0.0 + noise, "used": True})
    # An FP16 run (its qat_start is ANY) and an excluded run stay out of every arm.
    rows.append({"bits": 16, "qat_start": ANY, "seed": 0, "val_loss": 0.1, "latent_val_loss": 0.1, "used": True})
    rows.append({"bits": 4, "qat_start": "init", "seed": 9, "val_loss": 99.0, "latent_val_loss": 99.0, "used": False})
    return pd.DataFrame(rows)


def test_arms_come_from_the_right_runs_and_columns():
    table = _table()
    assert arms.applies(table)
    cells = {c.cell["bits"]: c for c in arms.cell_arms(table, ["bits", "qat_start", "seed"])}
    assert set(cells) == {4, 6}
    c = cells[4]
    assert c.best_late == "0.85"
    means = {arm: s.mean() for arm, s in c.arms.items()}
    assert means["QAT from init"] == pytest.approx(2.05, abs=2e-3)
    assert means["best late QAT"] == pytest.approx(2.01, abs=2e-3)
    assert means["FP16"] == pytest.approx(1.98, abs=2e-3)
    assert means["PTQ RTN"] == pytest.approx(2.04, abs=2e-3)
    assert means["PTQ clip"] == pytest.approx(2.02, abs=2e-3)
    assert means["PTQ GPTQ"] == pytest.approx(2.00, abs=2e-3)
    assert all(len(s) == len(SEEDS) for s in c.arms.values())  # the excluded seed 9 is not there
    # Paired by seed: GPTQ beats the best QAT arm by 0.01 on every seed, late beats init by 0.04.
    assert c.best_qat == "best late QAT"
    assert c.qat_vs_gptq.mean == pytest.approx(0.01, abs=2e-3) and c.qat_vs_gptq.wins == len(SEEDS)
    assert c.late_vs_init.mean == pytest.approx(0.04, abs=1e-9)


def test_section_and_csv_name_every_arm():
    table = _table()
    text = "\n".join(arms.section(table, ["bits", "qat_start", "seed"], [], number=9))
    assert text.startswith("## 9.") and "[0.85]" in text and "GPTQ wins 3/3" in text
    frame = arms.arms_frame(arms.cell_arms(table, ["bits", "qat_start", "seed"]))
    assert list(frame["arm"].unique()) == list(arms.ARMS) and len(frame) == 2 * len(arms.ARMS)


def test_no_section_without_a_qat_start_study():
    table = _table()
    assert arms.section(table[table["qat_start"] != "never"], ["bits", "qat_start", "seed"], [], 9) == []
    assert arms.section(table.drop(columns="qat_start"), ["bits", "seed"], [], 9) == []
