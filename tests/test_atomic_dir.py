"""qat_lab.atomic.atomic_dir: a folder of files put in place whole, or not at all."""

from __future__ import annotations

import pytest

from qat_lab import atomic
from qat_lab.atomic import atomic_dir


def test_the_folder_appears_whole_with_every_file_synced(tmp_path, monkeypatch):
    synced = []
    real = atomic._fsync
    monkeypatch.setattr(atomic, "_fsync", lambda p, directory=False: (synced.append(p.name), real(p, directory)))
    final = tmp_path / "cache" / "key"
    with atomic_dir(final) as tmp:
        assert not final.exists()
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"a")
        (tmp / "meta.json").write_text("{}")
    assert (final / "sub" / "a.bin").read_bytes() == b"a" and (final / "meta.json").read_text() == "{}"
    assert {"a.bin", "sub", "meta.json", "cache"} <= set(synced)  # files, their folders, the parent
    assert synced.index("a.bin") < synced.index("sub")
    assert [p.name for p in final.parent.iterdir()] == ["key"]  # no temp folder left


def test_a_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "key") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("tokeniser died")
    assert list(tmp_path.iterdir()) == []


def test_a_copy_already_in_place_is_kept(tmp_path):
    final = tmp_path / "key"
    with atomic_dir(final) as tmp:
        (tmp / "meta.json").write_text("first")
    with atomic_dir(final) as tmp:  # a second builder of the same cache loses the rename
        (tmp / "meta.json").write_text("second")
    assert (final / "meta.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]
