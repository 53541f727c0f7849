"""Jobs that would train the same model: the preflight and the dry run say so in the same one
line, with the real reason; data is told apart by content, not by folder name; the dry run
counts distinct jobs (one per job dir, as a real run makes them). Also the dry run's duration."""

from __future__ import annotations

import random

import pytest

from qat_lab import cli

pytestmark = pytest.mark.usefixtures("_in_tmp")


@pytest.fixture
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default sweep dir is relative: checked, never created


def _corpus(folder, seed: int):
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    (folder / "t.txt").write_text("".join(rng.choice("abcdefgh \n") for _ in range(20_000)))
    return folder


def _preflight(args: list[str], capsys) -> tuple[int, str]:
    with cli._config_module():
        count = cli.preflight(cli.normalise(args), True, args)
    return count, capsys.readouterr().err


def _dry_run(args: list[str], capsys) -> tuple[str, str]:
    with cli._config_module():
        out = cli.dry_run(cli.normalise(args), True, args)
    return out, capsys.readouterr().err


def test_two_corpora_in_folders_of_the_same_name_are_different_data(tmp_path, capsys):
    a, b = _corpus(tmp_path / "a" / "corp", 1), _corpus(tmp_path / "b" / "corp", 2)
    count, err = _preflight(["bits=4,16", "data=text", f"path={a},{b}", "experiment=smoke"], capsys)
    assert count == 4 and err == ""
    _, err = _dry_run(["bits=4,16", "data=text", f"path={a},{b}", "experiment=smoke"], capsys)
    assert err == ""


def test_two_paths_to_the_same_content_are_the_same_job(tmp_path, capsys):
    a = _corpus(tmp_path / "a" / "corp", 1)
    c = _corpus(tmp_path / "c" / "notes", 1)  # same text, another folder name: the same data
    args = ["bits=4,16", "data=text", f"path={a},{c}", "experiment=smoke", f"hydra.sweep.dir={tmp_path / 's'}"]
    count, err = _preflight(args, capsys)
    assert count == 4
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qatlab: warning: 2 job(s) would train exactly the same model")
    assert "path differs in the command but not in the composed config" in lines[0]
    assert "same content" in lines[0] and "cosine" not in lines[0] and "hydra.sweep.dir" not in lines[0]
    _, dry_err = _dry_run(args, capsys)
    assert dry_err == err
    assert not (tmp_path / "s").exists()


def test_a_value_listed_twice_is_one_job_and_says_so(capsys):
    count, err = _preflight(["bits=16.0,16", "experiment=smoke", "hydra.sweep.dir=s"], capsys)
    assert count == 1
    assert err == ("qatlab: warning: 1 job(s) are listed twice (bits=16.0 and bits=16 are the same value): "
                   "one job dir each, trained once\n")
    out, dry_err = _dry_run(["bits=16.0,16", "experiment=smoke", "hydra.sweep.dir=s"], capsys)
    assert out.splitlines()[0] == "1 jobs" and dry_err == err


def test_the_warning_gives_the_actual_reason(capsys):
    _, err = _preflight(["schedule=cosine", "warmdown=0.1,0.33", "experiment=smoke", "hydra.sweep.dir=s"], capsys)
    assert err == ("qatlab: warning: 1 job(s) would train exactly the same model as another (e.g. 'schedule=cosine "
                   "warmdown=0.1 experiment=smoke' and 'schedule=cosine warmdown=0.33 experiment=smoke': warmdown "
                   "differs in the command but not in the composed config (schedule=cosine has no warmdown window)); "
                   "drop the axis that changes nothing\n")
    _, err = _preflight(["bits=16", "quant.scale_rule=absmax,percentile", "experiment=smoke"], capsys)
    assert "quant.scale_rule differs" in err and "bits=16 does not quantise" in err and "warmdown" not in err
    _, err = _preflight(["trainer.val_every=5,10", "experiment=smoke"], capsys)
    assert "trainer.val_every differs" in err and "bookkeeping" in err and "quantis" not in err


def test_the_dry_run_warns_like_the_preflight(capsys):
    args = ["schedule=cosine", "warmdown=0.1,0.33", "experiment=smoke"]
    out, dry_err = _dry_run(args, capsys)
    assert out.splitlines()[0] == "2 jobs"  # two job dirs, as a real run makes them
    _, err = _preflight(args, capsys)
    assert dry_err == err and "schedule=cosine has no warmdown window" in err


def test_the_dry_run_counts_distinct_jobs(capsys):
    out, err = _dry_run(["model=glob(cpu-*)", "bits=16.0,16"], capsys)
    assert out.splitlines()[0] == "4 jobs"
    assert all(row.split(" | ")[1] == "1" for row in out.splitlines() if row.startswith("| cpu-"))
    assert "4 job(s) are listed twice (bits=16.0 and bits=16 are the same value)" in err


def test_dry_run_identities_equal_composed_ones():
    """The dry run sets the cheap axes into one composed config; each identity must equal the
    identity of the job composed and validated on its own."""
    from qat_lab.config import build_spec

    args = ["schedule=wsd,cosine", "bits=4,16", "warmdown=0.1,0.33", "lr_mult=1,2", "seed=0,1", "experiment=smoke"]
    with cli._config_module():
        axes = cli.sweep_axes(cli.sweep_overrides(cli.normalise(args), True))
        cheap = [v for k, v in axes.items() if k in cli.CHEAP_AXES]
        jobs = 0
        for schedule in axes["schedule"]:
            combo = [schedule, *axes["experiment"]]
            base = cli._compose(combo + [v[0] for v in cheap])
            for job in cli._cheap_variants(base, build_spec(base), combo, cheap):
                cfg = cli._compose(job.overrides)
                assert job.identity == cli._job_identity(cfg, build_spec(cfg)), job.overrides
                jobs += 1
    assert jobs == 32


@pytest.mark.parametrize("hours, text", [(0.1 / 3600, "under a second"), (12 / 3600, "12 s"), (59 / 3600, "59 s"),
                                         (0.5, "30 min"), (3.0, "3.0 h")])
def test_durations_below_a_minute_are_seconds(hours, text):
    assert cli._duration(hours) == text


def test_a_small_cpu_dry_run_is_not_about_0_min(capsys):
    out, _ = _dry_run(["experiment=smoke"], capsys)
    assert "about 0 min" not in out and "on this machine's CPU: about " in out
