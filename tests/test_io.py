"""_io.staged_folder: a run folder appears whole, keeps complete files after an error, and
leaves nothing behind when nothing was written."""

import os
import stat

import pytest

from alignez_tl._io import atomic_write_text, staged_folder


def _hidden(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_a_new_folder_appears_only_at_the_end(tmp_path):
    final = tmp_path / "runs" / "demo"
    with staged_folder(final) as out:
        assert out != final and out.parent == final.parent and not final.exists()
        atomic_write_text(out / "a.txt", "done\n")
    assert (final / "a.txt").read_text() == "done\n"
    assert _hidden(final.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(final.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's private 0700


def test_files_written_before_an_error_are_kept(tmp_path):
    final = tmp_path / "eval"
    with pytest.raises(RuntimeError, match="judge died"):
        with staged_folder(final) as out:
            atomic_write_text(out / "pairs.jsonl", "{}\n")
            raise RuntimeError("judge died")
    assert (final / "pairs.jsonl").read_text() == "{}\n" and _hidden(tmp_path) == []


def test_nothing_written_leaves_nothing_behind(tmp_path):
    final = tmp_path / "a" / "b" / "run"
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(final):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # the staging folder and the parents it made are gone


def test_an_existing_folder_is_written_into(tmp_path):
    (tmp_path / "old.txt").write_text("kept")
    with staged_folder(tmp_path) as out:
        assert out == tmp_path
        atomic_write_text(out / "new.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "old.txt"]
