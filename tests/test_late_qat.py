"""Late QAT (quant.start, quant.start_lr_below): when fake quantisation turns on, that it really is
off before and on after (eager, through a resume, under iEF's vmap), and the bad values."""

from __future__ import annotations

import csv

import pytest
import torch

from qat_lab.errors import ConfigError
from qat_lab.models.gpt import GPT, GPTConfig, lm_loss
from qat_lab.quant import QuantConfig, apply_qat, qat_is_on, set_qat
from qat_lab.schedules import ScheduleConfig
from tests.test_run_job import SMOKE, steps, task_config


def test_start_step_of_each_rule():
    wsd = ScheduleConfig(warmdown=0.5)
    mult = lambda t: wsd.multiplier(t, 100)  # noqa: E731
    assert QuantConfig(bits=4).start_step(100, mult) == 0
    assert QuantConfig(bits=4, start=0.5).start_step(100, mult) == 50
    assert QuantConfig(bits=4, start=1).start_step(100, mult) == 100  # never: the PTQ arm
    # LR trigger: the warmdown decays linearly from step 50; the multiplier drops below 0.15 at step 93.
    trigger = QuantConfig(bits=4, start_lr_below=0.15).start_step(100, mult)
    assert trigger == 93 and mult(trigger) < 0.15 <= mult(trigger - 1)
    assert QuantConfig(bits=16).start_step(100, mult) is None
    assert QuantConfig(bits=4, start_lr_below=0.15).start_label == "lr<0.15"
    assert [QuantConfig(bits=4, start=s).start_label for s in (0, 0.5, 1)] == ["init", "0.5", "never"]


@pytest.mark.parametrize("kwargs, message", [
    ({"bits": 4, "start": 1.5}, "quant.start=1.5 is not valid"),
    ({"bits": 4, "start": -0.1}, "quant.start=-0.1 is not valid"),
    ({"bits": 4, "start_lr_below": 0}, "quant.start_lr_below=0 is not valid"),
    ({"bits": 4, "start_lr_below": 1.5}, "quant.start_lr_below=1.5 is not valid"),
    ({"bits": 4, "start": 0.5, "start_lr_below": 0.15}, "set one of the two"),
    ({"bits": 16, "start": 0.5}, "quant.start=0.5 has no effect at bits=16"),
    ({"bits": 16, "start_lr_below": 0.15}, "quant.start_lr_below=0.15 has no effect at bits=16"),
])
def test_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        QuantConfig(**kwargs)


def qat_column(job) -> list[str]:
    return [r["qat_on"] for r in csv.DictReader(open(job / "metrics.csv"))][:-1]


def train_losses(job) -> list[float]:
    return [float(r["train_loss"]) for r in csv.DictReader(open(job / "metrics.csv")) if r["train_loss"]]


def test_off_before_the_start_and_on_after(tmp_path):
    from qat_lab import jobs

    late = jobs.run_job(task_config(tmp_path / "late", [*SMOKE, "trainer.steps=8", "bits=2", "quant.start=0.5"]))
    never = jobs.run_job(task_config(tmp_path / "never", [*SMOKE, "trainer.steps=8", "bits=2", "quant.start=1"]))
    init = jobs.run_job(task_config(tmp_path / "init", [*SMOKE, "trainer.steps=8", "bits=2"]))
    assert late["results"]["qat_start_step"] == 4 and never["results"]["qat_start_step"] == 8
    assert qat_column(tmp_path / "late") == ["0"] * 4 + ["1"] * 4
    assert qat_column(tmp_path / "never") == ["0"] * 8 and qat_column(tmp_path / "init") == ["1"] * 8
    late_l, never_l, init_l = (train_losses(tmp_path / n) for n in ("late", "never", "init"))
    assert late_l[:4] == never_l[:4]  # before the start: exactly the unquantised run
    assert late_l[4] != never_l[4]  # from the start: fake-quantised (2 bits move the loss)
    assert init_l[1] != never_l[1]  # (at step 0 the zero-initialised projections hide the quantiser)
    assert "grid_distance_at_qat_start" in late["results"]
    # The 'never' run trained unquantised: its latent loss is an FP16 run's, its val loss is PTQ.
    fp16 = jobs.run_job(task_config(tmp_path / "fp16", [*SMOKE, "trainer.steps=8", "bits=16"]))
    assert never["results"]["latent_val_loss"] == pytest.approx(fp16["results"]["val_loss"], rel=1e-6)
    assert never["results"]["ptq"]["4"]["val_loss"] == pytest.approx(fp16["results"]["ptq"]["4"]["val_loss"], rel=1e-6)


def test_lr_trigger_switches_inside_the_warmdown(tmp_path):
    from qat_lab import jobs

    rec = jobs.run_job(task_config(tmp_path / "job", [*SMOKE, "trainer.steps=8", "bits=4", "warmdown=0.5",
                                                      "quant.start_lr_below=0.5"]))
    # warmdown over steps 4..7: multipliers 1, 0.75, 0.5, 0.25 -> first below 0.5 is step 7
    assert rec["results"]["qat_start_step"] == 7 and qat_column(tmp_path / "job") == ["0"] * 7 + ["1"]


def test_a_resume_that_crosses_the_start_switches_at_the_same_step(tmp_path, monkeypatch):
    from qat_lab import jobs
    from qat_lab.callbacks import monitor as monitor_mod

    overrides = [*SMOKE, "trainer.steps=8", "bits=2", "quant.start=0.5", "trainer.checkpoint_every=2"]
    reference = jobs.run_job(task_config(tmp_path / "ref", overrides))
    original = monitor_mod.TrainingMonitor.on_train_batch_end

    def die(self, trainer, pl_module, *args):
        original(self, trainer, pl_module, *args)
        if pl_module.step == 3:  # after the step-2 checkpoint, before the start at 4
            raise KeyboardInterrupt

    monkeypatch.setattr(monitor_mod.TrainingMonitor, "on_train_batch_end", die)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        jobs.run_job(task_config(tmp_path / "job", overrides))
    monkeypatch.setattr(monitor_mod.TrainingMonitor, "on_train_batch_end", original)
    rec = jobs.run_job(task_config(tmp_path / "job", overrides))
    assert rec["resumed_from_step"] == 2 and steps(tmp_path / "job") == list(range(9))
    assert qat_column(tmp_path / "job") == qat_column(tmp_path / "ref") == ["0"] * 4 + ["1"] * 4
    assert rec["results"]["val_loss"] == pytest.approx(reference["results"]["val_loss"], rel=1e-6)


def test_the_switch_reaches_iefs_per_sample_gradients():
    """vmap over functional_call reads the qat_on buffer: off, the step is the unquantised model's."""
    from qat_lab.optim import IEFConfig, build_optimisers

    def step(bits, on):
        torch.manual_seed(0)
        model = GPT(GPTConfig(d_model=32, n_layer=1, n_head=2), 64)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(std=0.3)
        if bits != 16:
            apply_qat(model, QuantConfig(bits=bits))
            set_qat(model, on)
            assert qat_is_on(model) is on
        x = torch.randint(0, 64, (6, 9), generator=torch.Generator().manual_seed(1))
        opt = build_optimisers(model, IEFConfig(lr=0.1), 1.0)[0]
        opt.natural_step(x[:, :-1], x[:, 1:])
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(step(2, False), step(16, True))
    assert not torch.allclose(step(2, True), step(16, True))


def test_a_late_qat_model_trains_like_the_unquantised_one_until_it_switches():
    torch.manual_seed(0)
    a, b = GPT(GPTConfig(d_model=32, n_layer=1, n_head=2), 64), GPT(GPTConfig(d_model=32, n_layer=1, n_head=2), 64)
    with torch.no_grad():  # trained-looking weights (the zero-initialised projections hide quantisation)
        for p in a.parameters():
            if p.dim() == 2:
                p.normal_(std=0.3)
    b.load_state_dict(a.state_dict())
    apply_qat(b, QuantConfig(bits=3))
    set_qat(b, False)
    x = torch.randint(0, 64, (4, 9))
    assert torch.equal(lm_loss(a(x[:, :-1]), x[:, 1:]), lm_loss(b(x[:, :-1]), x[:, 1:]))
    set_qat(b, True)
    assert not torch.equal(lm_loss(a(x[:, :-1]), x[:, 1:]), lm_loss(b(x[:, :-1]), x[:, 1:]))
    assert set(a.state_dict()) == set(b.state_dict())  # the switch is not part of the weights


def test_a_resume_that_crosses_the_lr_trigger_switches_at_the_same_step(tmp_path, monkeypatch):
    """Killed before the LR trigger fires, resumed from the checkpoint: the trigger is recomputed from
    the schedule (not a saved flag), so qat_on and every loss equal the uninterrupted run's."""
    from qat_lab import jobs
    from qat_lab.callbacks import monitor as monitor_mod

    # wsd over 8 steps, warmdown 0.75: decay from t0=2, multipliers 1, 1, 1, 5/6, 4/6, 3/6, 2/6, 1/6
    mult = lambda t: ScheduleConfig(warmdown=0.75).multiplier(t, 8)  # noqa: E731
    start = QuantConfig(bits=2, start_lr_below=0.6).start_step(8, mult)
    assert start == 5 and mult(start) < 0.6 <= mult(start - 1)
    overrides = [*SMOKE, "trainer.steps=8", "bits=2", "warmdown=0.75", "quant.start_lr_below=0.6",
                 "trainer.checkpoint_every=2"]
    reference = jobs.run_job(task_config(tmp_path / "ref", overrides))
    never = [*SMOKE, "trainer.steps=8", "bits=2", "warmdown=0.75", "quant.start=1"]
    jobs.run_job(task_config(tmp_path / "never", never))
    original = monitor_mod.TrainingMonitor.on_train_batch_end

    def die(self, trainer, pl_module, *args):
        original(self, trainer, pl_module, *args)
        if pl_module.step == start:  # after the step-4 checkpoint, before the trigger's step 5 ran
            raise KeyboardInterrupt

    monkeypatch.setattr(monitor_mod.TrainingMonitor, "on_train_batch_end", die)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        jobs.run_job(task_config(tmp_path / "job", overrides))
    assert "1" not in qat_column(tmp_path / "job")  # it died with QAT still off
    monkeypatch.setattr(monitor_mod.TrainingMonitor, "on_train_batch_end", original)
    rec = jobs.run_job(task_config(tmp_path / "job", overrides))
    assert rec["resumed_from_step"] == 4 and steps(tmp_path / "job") == list(range(9))
    assert rec["results"]["qat_start_step"] == reference["results"]["qat_start_step"] == start
    assert qat_column(tmp_path / "job") == qat_column(tmp_path / "ref") == ["0"] * start + ["1"] * (8 - start)
    resumed, ref, never_l = (train_losses(tmp_path / n) for n in ("job", "ref", "never"))
    assert len(resumed) == 8 and resumed == pytest.approx(ref, rel=1e-6)
    # The switch is real: unquantised until the trigger, fake-quantised from it on.
    assert resumed[:start] == pytest.approx(never_l[:start], rel=1e-6)
    assert all(abs(a - b) > 0.01 for a, b in zip(resumed[start:], never_l[start:]))
    assert rec["results"]["val_loss"] == pytest.approx(reference["results"]["val_loss"], rel=1e-6)
