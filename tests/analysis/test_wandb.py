"""W&B in and out, at the boundary: no W&B server here.

The loader is tested against a minimal in-memory stand-in with the interface qat_lab uses:
`api.runs(path, filters={"group": ...})` yielding runs with `.id`, `.name`, `.group`, `.state`,
`.config` (flat sweep axes + `sweep_id` + `cfg`, as qatlab logs them), `.summary` (a mapping with
.get) and `.scan_history()` (every logged row; Lightning stores our step as
`trainer/global_step`). What this does NOT check is that the real wandb.Api returns exactly
this: that needs a W&B server. The export (--to-wandb) is tested the same way, against a stand-in
module with init / Table / Image / Artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from qat_lab.analysis import load, pipeline, report, wandb_export
from qat_lab.schedules import ScheduleConfig

STEPS = 20
MODEL = {"_target_": "qat_lab.models.gpt.GPTConfig", "name": "cpu-xs", "d_model": 64, "n_layer": 2, "n_head": 2,
         "n_kv_head": None, "mlp_ratio": 4.0, "rope_base": 10000.0, "logit_softcap": 30.0, "tie_embeddings": True,
         "norm_eps": 1e-6}


@dataclass
class FakeRun:
    id: str
    name: str
    group: str
    state: str
    config: dict
    rows: list[dict]
    summary: dict = field(default_factory=dict)
    scanned: int = 0

    def scan_history(self):
        self.scanned += 1
        return iter(self.rows)

    def history(self, *a, **k):  # the sampled history must never be used
        raise AssertionError("history() is sampled; the loader must use scan_history()")


class FakeApi:
    def __init__(self, runs: list[FakeRun]):
        self._runs = runs
        self.calls: list[tuple] = []

    def runs(self, path: str, filters: dict | None = None):
        self.calls.append((path, filters))
        return [r for r in self._runs if r.group == (filters or {}).get("group", r.group)]


def fake_run(bits: int, warmdown: float, final_loss: float | None, state: str = "finished", group: str = "sweep1") -> FakeRun:
    eta = ScheduleConfig(warmdown=warmdown).trace(STEPS)
    t0 = ScheduleConfig(warmdown=warmdown).warmdown_start(STEPS)
    rows = []
    for t in range(STEPS):
        row = {"_step": 3 * t + 7, "trainer/global_step": t, "train_loss": 3.0 - 0.05 * t, "lr/muon/matrices": 0.02 * eta[t],
               "lr/adamw/embed": 0.05 * eta[t], "_runtime": 0.1 * t}
        if t == t0:
            row["grid_distance"] = 0.24 if bits == 16 else 0.25
        rows.append(row)
    if final_loss is not None:
        rows.append({"_step": 3 * STEPS + 7, "trainer/global_step": STEPS, "val_loss": final_loss, "val_bpb": final_loss * 1.4,
                     "grid_distance": 0.245 if bits == 16 else 0.2548})
    axes = {"bits": bits, "warmdown": warmdown, "lr_mult": 1.0, "model": "cpu-xs", "optim": "muon",
            "schedule": "wsd-linear", "seed": 0, "steps": STEPS, "data": "shakespeare", "seq_len": 128, "batch_size": 32}
    cfg = {"model": MODEL, "schedule": {"_target_": "qat_lab.schedules.ScheduleConfig", "kind": "wsd",
                                        "warmdown": warmdown, "decay_shape": "linear", "warmup_steps": 0, "final_lr_frac": 0.0}}
    return FakeRun(id=f"id{bits}{warmdown}", name=f"bits={bits},warmdown={warmdown}", group=group, state=state,
                   config={**axes, "sweep_id": group, "cfg": cfg}, rows=rows, summary={"_runtime": 2.0})


@pytest.fixture
def api():
    return FakeApi([fake_run(16, 0.2, 2.00), fake_run(6, 0.2, 2.03), fake_run(16, 0.5, 2.01), fake_run(6, 0.5, 2.05),
                    fake_run(6, 0.8, None),                          # finished without a final eval: diverged
                    fake_run(16, 0.8, None, state="running"),        # still running
                    fake_run(4, 0.2, 2.2, group="other-sweep")])     # not this group


def test_wandb_runs_become_the_same_records(api):
    runset = load.load_wandb("ent/proj", "sweep1", api=api)
    assert api.calls == [("ent/proj", {"group": "sweep1"})]
    assert len(runset.runs) == 6 and runset.inputs == ["wandb:ent/proj group=sweep1"]
    rec = {r.record["job_name"]: r.record for r in runset.runs}
    r = rec["bits=6,warmdown=0.2"]
    assert r["status"] == "completed" and r["sweep_id"] == "sweep1"
    assert r["axes"]["bits"] == 6 and r["axes"]["steps"] == STEPS and "cfg" not in r["axes"]
    assert r["results"]["val_loss"] == 2.03 and r["results"]["steps_done"] == STEPS
    assert r["results"]["grid_distance_pre_warmdown"] == 0.25  # the history row at the first warmdown step
    assert r["params"]["non_embedding"] == 98816  # counted from the logged model config (docs/model_ladder.md)
    assert rec["bits=6,warmdown=0.8"]["status"] == "diverged"
    assert rec["bits=16,warmdown=0.8"]["status"] == "running"


def test_history_is_the_full_scan_keyed_by_our_step(api):
    runset = load.load_wandb("ent/proj", "sweep1", api=api)
    run = runset.runs[0]
    hist = runset.history(run.run_id)
    assert list(hist["step"]) == list(range(STEPS + 1))  # trainer/global_step, not W&B's _step
    assert {"train_loss", "lr/muon/matrices", "val_loss", "grid_distance"} <= set(hist.columns)
    assert "_runtime" not in hist.columns


def test_wandb_runs_analyse_like_local_ones(api, tmp_path):
    a = pipeline.analyse(load.load_wandb("ent/proj", "sweep1", api=api),
                         pipeline.Options(anneal_lambdas=(0.9, 0.99), max_plots=0))
    assert a.coverage.counts == {"completed": 4, "diverged": 1, "running": 1}
    assert set(a.optima["best_warmdown"]) == {0.2}
    pen = a.table.set_index("job_name")["penalty"]
    assert pen["bits=6,warmdown=0.5"] == pytest.approx(0.04)
    ratio = a.table.set_index("job_name")["grid_ratio_final"]["bits=6,warmdown=0.2"]
    assert ratio == pytest.approx(0.2548 / 0.245)
    assert len(a.cell_laws) == 2  # the LR trace comes from the logged config, the loss from the scan
    assert report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).exists()


class FakeWandbModule:
    """Stand-in for the wandb module: records what would be logged."""

    def __init__(self):
        self.init_kwargs, self.logged, self.artifacts, self.finished = None, {}, [], False
        outer = self

        class Run:
            id = "fake123"
            summary: dict = {}

            def log(self, data):
                outer.logged.update(data)

            def log_artifact(self, art):
                outer.artifacts.append(art)

            def finish(self):
                outer.finished = True

        self._run = Run()

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return self._run

    class Table:
        def __init__(self, dataframe, allow_mixed_types=False):
            self.rows = len(dataframe)

    class Image:
        def __init__(self, path):
            self.path = path

    class Artifact:
        def __init__(self, name, type):
            self.name, self.type, self.files = name, type, []

        def add_file(self, path):
            self.files.append(Path(path).name)


def test_to_wandb_logs_tables_plots_and_report_as_an_offline_analysis_run(api, tmp_path):
    a = pipeline.analyse(load.load_wandb("ent/proj", "sweep1", api=api), pipeline.Options(anneal=False))
    out = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).parent
    fake = FakeWandbModule()
    assert wandb_export.export(a, out, wandb_module=fake) == "fake123"
    kw = fake.init_kwargs
    assert kw["job_type"] == "analysis" and kw["mode"] == "offline" and kw["group"] == "sweep1"
    assert {"cells", "runs", "comparisons"} <= set(fake.logged)
    assert any(k.startswith("plots/") for k in fake.logged)
    assert {"report.md", "fits.json", "runs.csv"} <= set(fake.artifacts[0].files)
    assert fake.finished
    assert np.isfinite(a.table["val_loss"].dropna()).all()


def test_tables_sent_to_wandb_hold_the_wildcard_as_text():
    import json

    import pandas as pd

    from qat_lab.records.identity import ANY

    frame = pd.DataFrame({"bits": [16, 4], "quant.scale_rule": [ANY, "absmax"], "val_loss": [2.0, 2.1]})
    out = wandb_export._loggable(frame)
    assert out["quant.scale_rule"].tolist() == ["*", "absmax"] and out["val_loss"].tolist() == [2.0, 2.1]
    json.dumps(out.to_dict("records"))  # what W&B will do with it
    with pytest.raises(TypeError):
        json.dumps(frame.to_dict("records"))
