"""The fit cache: a report made from kept fits is the report made without them; a kept file is
untrusted input (anything that is not exactly a kept fit is refitted); the key follows the data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qat_lab.analysis import annealing_law as al, cell_fit, fit_cache, load, pipeline, report, synthetic
from qat_lab.analysis.cells import CELL_ID
from qat_lab.analysis.fit_cache import FitCache
from tests.analysis.conftest import small_planted


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """3 sizes x 2 bit-widths x 3 warmdowns x 2 seeds with loss curves: 6 annealing cells."""
    planted = small_planted(sizes={"m5": 5_000_000, "m10": 10_000_000, "m20": 20_000_000}, bits=(16, 6),
                            warmdowns=(0.1, 0.33, 0.5), seeds=(0, 1))
    return synthetic.write_sweep(tmp_path_factory.mktemp("fitcache"), planted)


def _report(sweep: Path, out: Path, cache: Path | None):
    a = pipeline.analyse(load.load_local([sweep]), pipeline.Options(workers=1, fit_cache=str(cache) if cache else None))
    report.write_report(a, out, ["qatlab-analyze", "SWEEP"])
    return a


def _outputs(out: Path) -> dict[str, bytes]:
    """Every file of a report, report.md without its timing line (wall time differs run to run)."""
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    files["report.md"] = b"\n".join(line for line in files["report.md"].splitlines()
                                    if not line.startswith((b"Analysis time:", b"`qatlab")))
    return files


def test_the_report_from_kept_fits_is_the_report_without_them(sweep, tmp_path):
    plain = _report(sweep, tmp_path / "plain", None)
    first = _report(sweep, tmp_path / "first", tmp_path / "cache")
    again = _report(sweep, tmp_path / "again", tmp_path / "cache")
    assert plain.fit_cache_use == {}
    # Cells whose fitted curves are equal (synthetic FP16 and INT6 curves can be) share one kept fit.
    kept = len(list((tmp_path / "cache").rglob("*.json")))
    assert first.fit_cache_use["misses"] == kept >= 1 and first.fit_cache_use["hits"] == 6 - kept
    assert again.fit_cache_use["hits"] == 6 and again.fit_cache_use["misses"] == 0
    assert _outputs(tmp_path / "first") == _outputs(tmp_path / "plain")
    assert _outputs(tmp_path / "again") == _outputs(tmp_path / "plain")  # figures and fits.json included


def _one_cell_curves(sweep: Path) -> list[al.Curve]:
    runset = load.load_local([sweep])
    a = pipeline.analyse(runset, pipeline.Options(workers=1, anneal=False))
    runs = a.by_warmdown.table(a.table)
    cell = runs[runs["used"]].groupby(CELL_ID, sort=True)
    _, g = next(iter(cell))
    curves, notes = cell_fit.cell_curves(g, {r.run_id: r.record for r in runset.runs}, runset.history)
    assert len(curves) == 3 and not notes
    return curves


def test_kept_fits_equal_the_fits_field_by_field(sweep, tmp_path):
    curves = _one_cell_curves(sweep)
    lambdas = al.scaled_lambdas(len(curves[0].trace.eta))
    fresh = cell_fit.fit_laws(curves[:1], lambdas)
    back = fit_cache.from_json(json.loads(json.dumps(fit_cache.to_json(fresh))))
    assert back == fresh  # dataclass equality: every float to the bit, the MPL fit included
    assert back.mpl is not None and list(back.tissue) == sorted(fresh.tissue)


def test_the_key_follows_the_curves_the_grid_and_the_law_set(sweep):
    curves = _one_cell_curves(sweep)
    lams = (0.9, 0.99)
    key = fit_cache.fit_key(curves, lams, True)
    assert fit_cache.fit_key([al.Curve(**vars(c)) for c in curves], lams, True) == key  # equal content, same key
    nudged = al.Curve(**{**vars(curves[0]), "loss": curves[0].loss + np.where(np.arange(len(curves[0].loss)) == 7,
                                                                               1e-12, 0.0)})
    assert fit_cache.fit_key([nudged, *curves[1:]], lams, True) != key
    assert fit_cache.fit_key(curves, (0.9, 0.995), True) != key
    assert fit_cache.fit_key(curves, lams, False) != key
    assert fit_cache.fit_key(curves[::-1], lams, True) != key


@pytest.mark.parametrize("content", [
    b"\x80\x04\x95 not json: a pickle",                       # never unpickled
    b'{"format": 1, "tissue": [], "mpl": null, "mpl_error": ""}',  # no fit in it
    b'{"format": 99}',                                          # another layout
    None,                                                       # a kept fit with a field of the wrong type
])
def test_a_kept_file_that_is_not_a_kept_fit_is_refitted_and_rewritten(sweep, tmp_path, content):
    curves = _one_cell_curves(sweep)[:1]
    lams = (0.9, 0.99)
    cache = FitCache(tmp_path / "c")
    good = cache.fit_laws(curves, lams)
    path = cache.path(fit_cache.fit_key(curves, lams, True))
    if content is None:
        data = json.loads(path.read_text())
        data["tissue"][0]["objective"] = "small"
        content = json.dumps(data).encode()
    path.write_bytes(content)
    cache.take_use()
    again = cache.fit_laws(curves, lams)
    use = cache.take_use()
    assert again == good
    assert use["misses"] == 1 and use["hits"] == 0 and len(use["unreadable"]) == 1 and str(path) in use["unreadable"][0]
    assert fit_cache.from_json(json.loads(path.read_text())) == good  # rewritten with the fit


def test_a_cache_that_cannot_be_written_costs_the_reuse_not_the_analysis(sweep, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder would go")
    a = _report(sweep, tmp_path / "out", blocker / "fits")
    assert len(a.cell_laws) == 6 and a.fit_cache_use["misses"] == 6 and a.fit_cache_use["unwritable"]


def test_the_console_script_keeps_fits_under_qat_lab_cache_unless_told_not_to(sweep, tmp_path):
    exe = [sys.executable, "-m", "qat_lab.analysis.cli", str(sweep), "--workers", "1", "--max-plots", "0"]
    env = {"QAT_LAB_CACHE": str(tmp_path / "root"), "PATH": "/usr/bin:/bin"}
    off = subprocess.run([*exe, "--out", str(tmp_path / "a"), "--no-fit-cache"], env=env, capture_output=True, text=True)
    assert off.returncode == 0, off.stderr
    assert not (tmp_path / "root").exists() and "annealing fits" not in off.stdout
    first = subprocess.run([*exe, "--out", str(tmp_path / "b")], env=env, capture_output=True, text=True)
    second = subprocess.run([*exe, "--out", str(tmp_path / "c")], env=env, capture_output=True, text=True)
    kept = len(list((tmp_path / "root" / "fits").rglob("*.json")))
    assert kept >= 1 and f"annealing fits: {6 - kept} reused, {kept} fitted" in first.stdout
    assert "annealing fits: 6 reused, 0 fitted" in second.stdout
