"""Local text / JSON / Parquet files read through Hugging Face `datasets`, streamed.

`data.corpus=hf data.path=<file or folder>`: the files (a folder is searched with `data.glob`,
sorted) are opened with `datasets.load_dataset(<format>, data_files=..., streaming=True)`, so
rows are read one at a time and a corpus never has to fit in memory. Only local files: the hub is
never contacted (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE are set unless the caller set them).

Rows become one byte stream: the `text_field` of each JSON/Parquet row is one document, and
documents are joined with the same separator as the other corpora; the `text` format reads lines
with their line breaks kept and joins them with nothing, so the stream is the files' text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from qat_lab.data.corpora import DOCUMENT_SEPARATOR
from qat_lab.errors import DataError

FORMATS = ("text", "json", "parquet")
_SUFFIXES = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json",
             ".ndjson": "json", ".parquet": "parquet"}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")


def find_files(path: str, glob: str) -> tuple[Path, list[Path]]:
    """(root, sorted files): `path` itself if it is a file, else the files under it matching `glob`."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"path={path} does not exist")
    files = [root] if root.is_file() else sorted(f for f in root.glob(glob) if f.is_file())
    if not files:
        raise DataError(f"path={path} has no files matching {glob}")
    return (root.parent if root.is_file() else root), files


def infer_format(files: list[Path], fmt: str | None) -> str:
    """The `datasets` builder for these files: `fmt` if given, else from their suffixes."""
    if fmt:
        return fmt
    found = set()
    for f in files:
        suffixes = [s.lower() for s in f.suffixes]
        if suffixes and suffixes[-1] in _COMPRESSED:
            suffixes = suffixes[:-1]
        found.add(_SUFFIXES.get(suffixes[-1] if suffixes else "", "?"))
    if len(found) != 1 or "?" in found:
        raise DataError(f"cannot tell the format of {files[0].parent} ({len(files)} files, suffixes "
                        f"{sorted({''.join(f.suffixes) for f in files})}): set data.hf_format to one of {', '.join(FORMATS)}")
    return found.pop()


def _offline() -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def iter_texts(files: list[Path], fmt: str, text_field: str) -> Iterator[str]:
    """The text of every row, streamed in file order."""
    _offline()
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    kwargs = {"keep_linebreaks": True} if fmt == "text" else {}
    try:
        ds = datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train", streaming=True, **kwargs)
        for row in ds:
            if text_field not in row:
                raise DataError(f"{files[0].parent}: rows have no field '{text_field}' (fields: "
                                f"{', '.join(sorted(row))}); set data.text_field")
            value = row[text_field]
            if value is None:
                continue
            if not isinstance(value, str):
                raise DataError(f"{files[0].parent}: field '{text_field}' holds {type(value).__name__}, not text")
            yield value
    except DataError:
        raise
    except Exception as e:  # datasets / pyarrow parse errors: one line, naming the data
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read {fmt} files under {files[0].parent}: {message}") from None


def iter_pieces(files: list[Path], fmt: str, text_field: str) -> Iterator[bytes]:
    """The corpus as a byte stream: documents and the separators between them."""
    sep = b"" if fmt == "text" else DOCUMENT_SEPARATOR
    first = True
    for text in iter_texts(files, fmt, text_field):
        if not text:
            continue
        if not first and sep:
            yield sep
        first = False
        yield text.encode("utf-8", errors="surrogatepass")
