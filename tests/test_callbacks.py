"""The callbacks in process: GridProbe, QuickValidation, LossCurve, Checkpointer, Progress and the
order in which TrainingMonitor calls them around update t (callbacks/monitor.py's docstring).

One tiny late-QAT run (cpu-xs, 10 steps) is built and collected the way train.train does it
(train.build -> train.make_trainer -> Trainer.fit -> train.collect), with a recorder callback
that keeps the weights entering every step and spies that log every call of the monitor's pieces.
The tests then recompute each measurement directly from the recorded weights."""

from __future__ import annotations

import copy
import csv
import logging
import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from qat_lab import train
from qat_lab.callbacks import load_checkpoint
from qat_lab.callbacks import progress as progress_mod
from qat_lab.callbacks.checkpoint import CHECKPOINT_NAME, FORMAT
from qat_lab.callbacks.progress import Progress
from qat_lab.config import build_spec
from qat_lab.models.gpt import lm_loss
from qat_lab.module import QATLanguageModel
from qat_lab.quant import set_qat
from qat_lab.quant.grid_distance import grid_distance
from qat_lab.quant.qat import qat_is_on

STEPS = 10
T0 = 7  # first warmdown step: steps - round(warmdown * steps)
QAT_START = 5  # qat_start=start0.5: round(0.5 * steps)
GRID_EVERY, VAL_EVERY, CURVE_EVERY, CKPT_EVERY, LOG_EVERY = 4, 3, 3, 4, 3
VAL_BATCHES, BATCH, SEQ = 2, 8, 32
OVERRIDES = ["experiment=smoke", f"trainer.steps={STEPS}", "warmdown=0.3", "bits=4", "qat_start=start0.5",
             f"trainer.grid_every={GRID_EVERY}", f"trainer.val_every={VAL_EVERY}", f"trainer.val_batches={VAL_BATCHES}",
             f"trainer.curve_every={CURVE_EVERY}", "trainer.curve_batches=1", f"trainer.checkpoint_every={CKPT_EVERY}",
             f"trainer.log_every={LOG_EVERY}", f"data.batch_size={BATCH}", f"data.seq_len={SEQ}", "data.val_tokens=512",
             "ptq.methods=[rtn]", "ptq.bits=[4]"]

# The steps each measurement is due at, from the documented rules (not from the pieces' due()).
GRID_STEPS = sorted({t for t in range(STEPS) if t % GRID_EVERY == 0} | {T0, QAT_START})
VAL_STEPS = [t for t in range(1, STEPS) if t % VAL_EVERY == 0]
CURVE_STEPS = sorted({t for t in range(STEPS) if t % CURVE_EVERY == 0} | {T0})
CKPT_STEPS = [s for s in range(1, STEPS) if s % CKPT_EVERY == 0]  # steps done when a checkpoint is saved
PROGRESS_DONE = sorted({d for d in range(2, STEPS + 1) if d % LOG_EVERY == 0} | {STEPS})


def compose_spec(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="qat_lab.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg, build_spec(cfg)


class Recorder(L.Callback):
    """Keeps the weights (and fake-quantisation state) entering every step, and the final ones."""

    def __init__(self):
        self.entering: dict[int, tuple[dict, bool | None]] = {}
        self.final: tuple[dict, bool | None] | None = None

    @staticmethod
    def _state(pl_module):
        return copy.deepcopy(pl_module.model.state_dict()), qat_is_on(pl_module.model)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.entering[pl_module.step] = self._state(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.final = self._state(pl_module)


class ProgressLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def spy(obj, name: str, before=None, after=None):
    """Replace obj.name by a wrapper calling before(*args) and after(result, *args) around it."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        if before:
            before(*args, **kwargs)
        out = original(*args, **kwargs)
        if after:
            after(out, *args, **kwargs)
        return out

    setattr(obj, name, wrapper)


def run_tiny_job(job_dir: Path, overrides: list[str]):
    """build -> fit (with the recorder and the spies) -> collect, as train.train does, minus W&B."""
    quiet = os.environ.pop("QATLAB_QUIET", None)  # progress lines on, whatever the caller's shell says
    try:
        return _run_tiny_job(job_dir, overrides)
    finally:
        if quiet is not None:
            os.environ["QATLAB_QUIET"] = quiet


def _run_tiny_job(job_dir: Path, overrides: list[str]):
    train.quiet_lightning()  # as jobs.run_job does: the known third-party noise stays out of the output
    cfg, spec = compose_spec(overrides)
    record = {"config": OmegaConf.to_container(cfg, resolve=True)}
    ident = {"job_dir": str(job_dir), "job_num": 0, "job_name": "tiny"}
    job = train.build(spec, ident, record, say=lambda line: None)
    m, mod = job.monitor, job.module
    events: list[tuple] = []
    saves: list[dict] = []

    spy(m.grid, "measure", before=lambda model, step=None: events.append(("grid", step)))
    seen_qat: list[tuple[str, int, bool | None]] = []  # the quantiser's state each loss measurement saw
    spy(m.quick_val, "measure", before=lambda model, *a: (events.append(("val", mod.step)),
                                                          seen_qat.append(("val", mod.step, qat_is_on(model)))))
    spy(m.curve, "measure", before=lambda model, *a: (events.append(("curve", mod.step)),
                                                      seen_qat.append(("curve", mod.step, qat_is_on(model)))))
    spy(mod, "training_step", before=lambda *a: events.append(("update", mod.step)))
    spy(m.history, "write", before=lambda step, *a: events.append(("row", step)))
    spy(m.history, "make_durable", before=lambda: events.append(("durable", mod.step)))
    spy(m.divergence, "check", before=lambda step, loss: events.append(("divergence", step)))
    spy(m.progress, "step", before=lambda t, loss: events.append(("progress", t)))

    def after_save(_, pl_module, *args):
        events.append(("save", pl_module.step))
        with open(m.history.path, newline="") as f:  # what a resumed run would find on disk now
            on_disk = [int(r["step"]) for r in csv.DictReader(f)]
        saves.append({"step": pl_module.step, "history_on_disk": on_disk,
                      "file": torch.load(m.checkpointer.path, map_location="cpu", weights_only=True),
                      "model": copy.deepcopy(pl_module.model.state_dict()),
                      "optimisers": copy.deepcopy([o.state_dict() for o in pl_module.raw_optimisers])})

    spy(m.checkpointer, "save", after=after_save)

    recorder = Recorder()
    lines = ProgressLines()
    log = logging.getLogger("qat_lab")
    level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(lines)
    try:
        trainer = train.make_trainer(spec, job.job_dir, [recorder, m], [])
        trainer.fit(mod, datamodule=job.data)
        train.collect(job, trainer, 1.0, record)
    finally:
        m.history.close()
        log.removeHandler(lines)
        log.setLevel(level)
    with open(job.job_dir / "metrics.csv", newline="") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    return SimpleNamespace(spec=spec, job=job, record=record, events=events, saves=saves, recorder=recorder,
                           lines=lines.lines, rows=rows, seen_qat=seen_qat)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return run_tiny_job(tmp_path_factory.mktemp("callbacks") / "job", OVERRIDES)


@pytest.fixture(scope="module")
def model_at(run):
    """state -> a fresh copy of the run's model holding those weights and that QAT state."""
    fresh = QATLanguageModel(run.spec, run.job.data.vocab_size).model

    def load(state):
        weights, qat_on = state
        fresh.load_state_dict(weights)
        if qat_on is not None:
            set_qat(fresh, qat_on)
        return fresh

    return load


def direct_loss(model, batches) -> float:
    """Token-weighted mean next-token loss, computed here rather than through evaluation.mean_loss."""
    model.eval()
    with torch.no_grad():
        losses = [(float(lm_loss(model(x), y)), y.numel()) for x, y in batches]
    model.train()
    return sum(loss * n for loss, n in losses) / sum(n for _, n in losses)


def measured(rows, column) -> dict[int, float]:
    return {t: float(r[column]) for t, r in rows.items() if r[column] != ""}


def test_the_run_completes_every_step(run):
    assert run.record["status"] == "completed" and run.job.module.step == STEPS
    assert sorted(run.rows) == list(range(STEPS + 1))
    assert sorted(run.recorder.entering) == list(range(STEPS))
    assert run.job.module.qat_start_step == QAT_START and run.job.monitor.grid.t0 == T0


def test_row_t_measures_the_model_update_t_trains(run):
    """Late QAT: the validation and curve losses of row t see fake quantisation on exactly when
    update t trains with it (step 0 of a late run included), like row t's qat_on and train loss."""
    during = [(kind, t, on) for kind, t, on in run.seen_qat if t < STEPS]
    assert 0 in {t for _, t, _ in during} and {on for _, _, on in during} == {False, True}
    assert all(on == (t >= QAT_START) for _, t, on in during), during
    assert all(int(run.rows[t]["qat_on"]) == (t >= QAT_START) for t in range(STEPS))


def test_monitor_calls_its_pieces_in_the_documented_order(run):
    """At step t: grid, quick val, curve on the entering weights -> update t -> row t -> divergence
    -> (history durable -> checkpoint) -> progress; then the final grid, curve and row."""
    expected = []
    for t in range(STEPS):
        expected += [("grid", t)] * (t in GRID_STEPS) + [("val", t)] * (t in VAL_STEPS)
        expected += [("curve", t)] * (t in CURVE_STEPS)
        expected += [("update", t), ("row", t), ("divergence", t)]
        expected += [("durable", t + 1), ("save", t + 1)] * (t + 1 in CKPT_STEPS)
        expected += [("progress", t)]
    expected += [("grid", None), ("curve", STEPS), ("row", STEPS)]  # on_train_end, then train.collect
    assert run.events == expected


def test_grid_probe_measures_the_weights_entering_step_t(run, model_at):
    qcfg = run.spec.quant
    got = measured(run.rows, "grid_distance")
    assert sorted(got) == GRID_STEPS + [STEPS]
    for t in GRID_STEPS:
        direct = grid_distance(model_at(run.recorder.entering[t]), qcfg)[0]
        assert got[t] == pytest.approx(direct, rel=1e-9, abs=0), t
        after = grid_distance(model_at(run.recorder.entering.get(t + 1, run.recorder.final)), qcfg)[0]
        assert got[t] != pytest.approx(after, rel=1e-9, abs=0), t  # not the weights leaving step t
    grid = run.job.monitor.grid
    for snap, t in ((grid.pre_warmdown, T0), (grid.at_qat_start, QAT_START)):
        assert snap == grid_distance(model_at(run.recorder.entering[t]), qcfg)
    final = grid_distance(model_at(run.recorder.final), qcfg)
    assert grid.final == final and got[STEPS] == pytest.approx(final[0], rel=1e-9, abs=0)
    results = run.record["results"]
    assert results["grid_distance_pre_warmdown"] == grid.pre_warmdown[0]
    assert results["grid_distance_at_qat_start"] == grid.at_qat_start[0]


def test_quick_validation_is_the_loss_on_val_batches_every_val_every_steps(run, model_at):
    data = run.job.data
    batches = data.eval_batches(VAL_BATCHES * BATCH * SEQ)
    assert [tuple(x.shape) for x, _ in batches] == [(BATCH, SEQ)] * VAL_BATCHES
    to_bpb = data.bits_per_byte_for(batches)
    got = measured(run.rows, "val_loss")
    assert sorted(got) == VAL_STEPS + [STEPS]  # and the final evaluation's, in the last row
    for t in VAL_STEPS:
        direct = direct_loss(model_at(run.recorder.entering[t]), batches)
        assert got[t] == pytest.approx(direct, rel=1e-5), t
        assert float(run.rows[t]["val_bpb"]) == pytest.approx(to_bpb(got[t]), rel=1e-9)
    assert got[STEPS] == pytest.approx(run.record["results"]["val_loss"], rel=1e-9)


def test_loss_curve_is_the_loss_on_one_fixed_batch(run, model_at):
    batches = run.job.data.eval_batches(BATCH * SEQ)
    assert len(batches) == 1
    got = measured(run.rows, "curve_loss")
    assert sorted(got) == CURVE_STEPS + [STEPS]
    for t in CURVE_STEPS:
        assert got[t] == pytest.approx(direct_loss(model_at(run.recorder.entering[t]), batches), rel=1e-5), t
    assert got[STEPS] == pytest.approx(direct_loss(model_at(run.recorder.final), batches), rel=1e-5)
    assert len(set(got.values())) == len(got)  # the model moves between points


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_checkpoints_hold_the_live_state_after_a_durable_history(run):
    assert [s["step"] for s in run.saves] == CKPT_STEPS
    for s in run.saves:
        state, step = s["file"], s["step"]
        assert state["format"] == FORMAT and state["step"] == step
        assert s["history_on_disk"] == list(range(step))  # rows 0..step-1, on disk before the save
        assert same(state["model"], s["model"]) and same(state["optimisers"], s["optimisers"])
        assert same(state["model"], run.recorder.entering[step][0])  # the weights entering step `step`
        assert state["qat_on"] == (step - 1 >= QAT_START)  # update step-1's fake-quantisation state
        assert state["optimisers"][0]["state"]  # a real optimiser state, not an empty one
    # The last one is on disk and passes load_checkpoint (weights_only=True, fingerprint, step range).
    last = run.saves[-1]
    state, note = load_checkpoint(run.job.job_dir, run.job.monitor.checkpointer.fingerprint, STEPS)
    assert note is None and state["step"] == last["step"] and same(state["model"], last["model"])
    assert (run.job.job_dir / CHECKPOINT_NAME).exists()


def test_progress_lines_every_log_every_steps_and_at_the_end(run):
    assert len(run.lines) == len(PROGRESS_DONE)
    pattern = re.compile(r"^\[0\] tiny: step (\d+)/(\d+)  loss (\S+)  (\S+)k tok/s  elapsed \S+  ETA (\d+):(\d\d)$")
    for line, done in zip(run.lines, PROGRESS_DONE):
        match = pattern.match(line)
        assert match, line
        assert (int(match[1]), int(match[2])) == (done, STEPS)
        assert match[3] == f"{float(run.rows[done - 1]['train_loss']):.3f}"  # the loss of update done-1
        assert float(match[4]) > 0
    assert run.lines[-1].endswith("ETA 0:00")


def test_progress_rate_and_eta_follow_the_clock(monkeypatch):
    """Driven by a fake clock: 2 s per step, timed from the end of the first step."""
    clock = iter(range(0, 100, 2))
    monkeypatch.setattr(progress_mod.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.delenv("QATLAB_QUIET", raising=False)
    total, every, per_step = 10, 3, 1000
    p = Progress("[7] head", total, per_step, every)
    lines = {t: p.step(t, 1.0 + t) for t in range(total)}
    assert [t + 1 for t, line in lines.items() if line] == [3, 6, 9, 10]
    for t, line in lines.items():
        if line:
            elapsed, rate = 2 * t, 0.5  # steps per second since the end of step 0
            eta = round((total - (t + 1)) / rate)
            assert line == (f"[7] head: step {t + 1}/{total}  loss {1.0 + t:.3f}  {rate * per_step / 1000:.1f}k tok/s"
                            f"  elapsed 0:{elapsed:02d}  ETA {eta // 60}:{eta % 60:02d}")


def test_progress_is_silent_when_quiet(monkeypatch):
    monkeypatch.setenv("QATLAB_QUIET", "1")
    p = Progress("h", 4, 10, 1)
    assert [p.step(t, 1.0) for t in range(4)] == [None] * 4


def test_a_diverged_step_is_written_then_stops_without_checkpoint_or_progress(tmp_path):
    out = run_tiny_job(tmp_path / "job", [*OVERRIDES, "trainer.max_loss=0.5", "trainer.checkpoint_every=1"])
    assert out.record["status"] == "diverged" and out.record["divergence"]["rule"] == "max_loss"
    assert out.job.module.step == 1 and out.job.monitor.diverged.step == 0
    assert sorted(out.rows) == [0] and float(out.rows[0]["train_loss"]) > 0.5
    assert out.saves == [] and out.lines == [] and not (out.job.job_dir / CHECKPOINT_NAME).exists()
    assert ("progress", 0) not in out.events and out.events.index(("row", 0)) < out.events.index(("divergence", 0))


def test_grid_probe_due_steps():
    from qat_lab.callbacks import GridProbe

    _, spec = compose_spec(OVERRIDES)
    probe = GridProbe(spec.quant, GRID_EVERY, T0, QAT_START)
    assert [t for t in range(STEPS) if probe.due(t)] == GRID_STEPS
    assert GridProbe(spec.quant, 0, T0, 0).qat_start is None  # QAT from init: no extra probe at step 0
    assert [t for t in range(STEPS) if GridProbe(spec.quant, 0, T0, 0).due(t)] == [T0]
