"""Replacing a file or folder never loses it: a kill at any point leaves the old or the new version."""

from __future__ import annotations

import os

import pytest

from kilolayer import atomic


def make_folder(path, text):
    path.mkdir()
    (path / "weights").write_text(text)


def test_a_folder_is_replaced_only_when_the_new_one_is_complete(tmp_path):
    target = tmp_path / "model"
    make_folder(target, "old")
    with pytest.raises(RuntimeError):
        atomic.atomic_replace(target, lambda path: (make_folder(path, "half"), (_ for _ in ()).throw(RuntimeError("disk full"))))
    assert (target / "weights").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    atomic.atomic_replace(target, lambda path: make_folder(path, "new"))
    assert (target / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_kill_between_the_two_renames_keeps_the_old_folder(tmp_path, monkeypatch):
    target = tmp_path / "step-00000004"
    make_folder(target, "old")
    real_rename = os.rename
    calls = []

    def rename_then_die(source, destination):  # the process dies right after moving the old folder aside
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_rename(source, destination)

    monkeypatch.setattr(atomic.os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_replace(target, lambda path: make_folder(path, "new"))
    monkeypatch.setattr(atomic.os, "rename", real_rename)
    assert not target.exists()  # what a kill at that instant leaves on disk
    assert atomic.leftover_targets(tmp_path) == [target]
    atomic.recover(target)
    assert (target / "weights").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004"]


def test_a_file_is_replaced_in_one_rename(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("a: 1\n")
    atomic.write_text(target, "a: 2\n")
    assert target.read_text() == "a: 2\n" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
