"""The one atomic write (qat_lab.atomic)."""

import os
import stat

import pytest

from qat_lab.atomic import atomic_output, atomic_write


def test_write_replace_and_modes(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write(tmp_path / "sub" / "f.json", "one")
        assert p.read_text() == "one" and stat.S_IMODE(p.stat().st_mode) == 0o644
        atomic_write(p, b"two")
        assert p.read_bytes() == b"two"
        assert sorted(x.name for x in p.parent.iterdir()) == ["f.json"]
    finally:
        os.umask(old)


def test_a_failed_writer_leaves_the_old_file_and_no_temp(tmp_path):
    p = atomic_write(tmp_path / "f", "old")
    with pytest.raises(RuntimeError):
        with atomic_output(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f"]
