"""The schedule laws' fits, kept on disk by what they were fitted on, so that running
qatlab-analyze again on the same sweep (another --compare, --out or hold-out, a sweep grown by a
few runs) reuses them instead of refitting every cell.

What is kept is cell_fit.LawFits, the costly part of a cell's fit (Tissue's law at every λ,
the Multi-Power Law): everything the report derives from it (held-out errors, predicted optima,
curves, tables) is recomputed from the kept parameters by the same code, so a report made from the
cache is the report made without it, to the byte (tests/analysis/test_fit_cache.py).

The key is a SHA-256 of everything the fit depends on:
- the fitted curves: each one's warmdown, loss values, LR trace, warmup and trace source, as bytes;
- the λ grid and whether the Multi-Power Law is fitted;
- the fitting code itself (the source of annealing_law.py, multipower_law.py and cell_fit.py,
  which hold every fitting setting) and the numpy and scipy versions, so an edit or an upgrade refits.

A kept fit is untrusted input (a shared or copied cache folder): JSON, never pickle, and read back
field by field against the dataclasses' types; a file that does not parse or does not match is a
miss, and the fit is redone and the file rewritten (atomically, readable as the umask says). A
cache folder that cannot be written costs the reuse, never the analysis.

Where: <cache root>/fits (qat_lab.cache: $QAT_LAB_CACHE or ~/.cache/qat_lab), one file per cell fit,
a few kB each; qatlab-analyze --fit-cache DIR moves it, --no-fit-cache fits everything afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from functools import cache
from pathlib import Path

import numpy as np
import scipy

from qat_lab.analysis import annealing_law, cell_fit, multipower_law
from qat_lab.analysis.annealing_law import Curve, Fit
from qat_lab.analysis.cell_fit import LawFits
from qat_lab.analysis.multipower_law import MPLFit
from qat_lab.atomic import atomic_write
from qat_lab.cache import cache_root

FORMAT = 1
"""The layout of a kept file; part of the key."""


def default_dir() -> Path:
    return cache_root() / "fits"


@cache
def _code_fingerprint() -> str:
    h = hashlib.sha256()
    for module in (annealing_law, multipower_law, cell_fit):
        h.update(Path(module.__file__).read_bytes())
    h.update(f"numpy {np.__version__} scipy {scipy.__version__} format {FORMAT}".encode())
    return h.hexdigest()


def fit_key(curves: list[Curve], lambdas: tuple[float, ...], with_mpl: bool) -> str:
    """The SHA-256 naming the fit of `curves` on the λ grid `lambdas` (see the module docstring)."""
    h = hashlib.sha256(_code_fingerprint().encode())
    h.update(json.dumps({"lambdas": [float(x) for x in lambdas], "mpl": bool(with_mpl)}).encode())
    for c in curves:
        h.update(json.dumps({"warmdown": float(c.warmdown), "warmup": int(c.trace.warmup),
                             "source": c.trace.source, "n": len(c.loss), "m": len(c.trace.eta)}).encode())
        h.update(np.ascontiguousarray(c.loss, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(c.trace.eta, dtype=np.float64).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ to and from JSON

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CHECKS = {
    float: _number, int: lambda v: isinstance(v, int) and not isinstance(v, bool), bool: lambda v: isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    "params": lambda v: isinstance(v, dict) and all(isinstance(k, str) and _number(x) for k, x in v.items()),
    "optional int": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
}
_FIT_TYPES = {"params": "params", "lam": float, "objective": float, "success": bool, "message": str,
              "n_starts": int, "n_converged": int, "n_points": int}
_MPL_TYPES = {"params": "params", "objective": float, "success": bool, "message": str, "n_starts": int,
              "n_converged": int, "n_points": int, "n_grid": int, "trf_message": str, "trf_success": bool,
              "max_points": "optional int", "spacing": str, "upper": "params"}


def _build(cls, types: dict, data, names: tuple[str, ...]):
    """cls(**data) when data has exactly the fields of `types`, each of its type, and params named
    `names`; else ValueError."""
    if not isinstance(data, dict) or set(data) != set(types):
        raise ValueError(f"{cls.__name__}: fields {sorted(data) if isinstance(data, dict) else type(data).__name__}")
    for name, kind in types.items():
        if not _CHECKS[kind](data[name]):
            raise ValueError(f"{cls.__name__}.{name}: {data[name]!r}")
    if tuple(data["params"]) != names:
        raise ValueError(f"{cls.__name__}.params: {sorted(data['params'])}")
    return cls(**{k: (float(v) if types[k] is float else dict(v) if types[k] in ("params",) else v)
                  for k, v in data.items()})


def to_json(fits: LawFits) -> dict:
    return {"format": FORMAT, "tissue": [dataclasses.asdict(f) for f in fits.tissue.values()],
            "mpl": dataclasses.asdict(fits.mpl) if fits.mpl is not None else None, "mpl_error": fits.mpl_error}


def from_json(data) -> LawFits:
    """The LawFits a kept file holds; ValueError when it is not exactly what to_json writes."""
    if not isinstance(data, dict) or set(data) != {"format", "tissue", "mpl", "mpl_error"} or data["format"] != FORMAT:
        raise ValueError("not a kept fit of this format")
    if not isinstance(data["tissue"], list) or not data["tissue"] or not isinstance(data["mpl_error"], str):
        raise ValueError("tissue / mpl_error")
    tissue = [_build(Fit, _FIT_TYPES, d, annealing_law.PARAM_NAMES) for d in data["tissue"]]
    mpl = None if data["mpl"] is None else _build(MPLFit, _MPL_TYPES, data["mpl"], multipower_law.PARAM_NAMES)
    if len({f.lam for f in tissue}) != len(tissue) or not all(math.isfinite(f.lam) for f in tissue):
        raise ValueError("tissue: λ values")
    return LawFits(tissue={f.lam: f for f in sorted(tissue, key=lambda f: f.lam)}, mpl=mpl, mpl_error=data["mpl_error"])


# ------------------------------------------------------------------------------ the cache

@dataclasses.dataclass
class FitCache:
    """cell_fit.fit_laws with its results kept under `directory` (see the module docstring)."""
    directory: Path
    hits: int = 0
    misses: int = 0
    unreadable: list[str] = dataclasses.field(default_factory=list)
    """Kept files that did not parse or match (each was refitted and rewritten)."""
    unwritable: str = ""
    """Why the last write failed ('' when none did): the fits were used, not kept."""

    def take_use(self) -> dict:
        """What this cache did since the last call (hits, misses, problems), and reset: a forked
        worker's copy reports per task, so the counts add up however the tasks were spread."""
        use = {"hits": self.hits, "misses": self.misses, "unreadable": self.unreadable, "unwritable": self.unwritable}
        self.hits, self.misses, self.unreadable, self.unwritable = 0, 0, [], ""
        return use

    def path(self, key: str) -> Path:
        return Path(self.directory) / key[:2] / f"{key}.json"

    def get(self, key: str) -> LawFits | None:
        path = self.path(key)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            self.unreadable.append(f"{path}: {e}")
            return None
        try:
            return from_json(json.loads(text))
        except (ValueError, TypeError, KeyError, RecursionError) as e:  # json's errors are ValueErrors
            self.unreadable.append(f"{path}: {e}")
            return None

    def put(self, key: str, fits: LawFits) -> None:
        try:
            # allow_nan: an objective may be inf; Python's json reads its Infinity back.
            atomic_write(self.path(key), json.dumps(to_json(fits)), fsync=False)
        except OSError as e:
            self.unwritable = str(e)

    def fit_laws(self, curves: list[Curve], lambdas: tuple[float, ...], with_mpl: bool = True) -> LawFits:
        """cell_fit.fit_laws, from the cache when it holds this fit (a fitter for fit_cell)."""
        key = fit_key(curves, lambdas, with_mpl)
        kept = self.get(key)
        if kept is not None:
            self.hits += 1
            return kept
        self.misses += 1
        fits = cell_fit.fit_laws(curves, lambdas, with_mpl)
        self.put(key, fits)
        return fits
