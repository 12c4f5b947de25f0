"""Files saved together are committed together: a crash or a failing disk after any step of a
save leaves all the old files or all the new ones, never a mix, and the next save tidies up."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from fault_injection import Crash, Steps, leftovers, snapshot
from utils import files
from utils.errors import UserError
from utils.files import (atomic_write_text, commit_files, current_path, finish_commits,
                         printable, scratch_folder)

PIECES = ("weights.bin", "weights.json")


def write_version(folder: str, version: int, steps_between=None) -> None:
    """Version `version` of a pair whose .json names its weights' content, replacing
    `stale.old` (present in version 1 only). A writer that stops half way through its file is
    among the steps: `steps_between()` runs between its two halves."""
    content = f"weights of version {version}\n" * 100

    def weights(tmp):
        with open(tmp, "w") as stream:
            stream.write(content[:len(content) // 2])
            stream.flush()
            if steps_between:
                steps_between()
            stream.write(content[len(content) // 2:])

    def manifest(tmp):
        with open(tmp, "w") as stream:
            json.dump({"version": version, "weights": content}, stream)

    commit_files(folder, {"weights.bin": weights, "weights.json": manifest}, label="weights",
                 remove=["stale.old"])


def first_version(folder: str) -> None:
    os.makedirs(folder)
    content = "weights of version 1\n" * 100
    open(os.path.join(folder, "weights.bin"), "w").write(content)
    json.dump({"version": 1, "weights": content}, open(os.path.join(folder, "weights.json"), "w"))
    open(os.path.join(folder, "stale.old"), "w").write("replaced by version 2")
    open(os.path.join(folder, "other.txt"), "w").write("not part of the save")


def read_version(folder: str) -> int:
    """The version a reader sees; it fails if the pair does not belong together."""
    with open(current_path(os.path.join(folder, "weights.json"))) as stream:
        manifest = json.load(stream)
    with open(current_path(os.path.join(folder, "weights.bin"))) as stream:
        assert stream.read() == manifest["weights"], "weights and .json of different saves"
    return manifest["version"]


def on_disk(folder: str) -> dict:
    return {name: open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))}


def crash_points(tmp_path, monkeypatch) -> list:
    """(snapshot folder, step name) after every step of saving version 2 over version 1."""
    folder = str(tmp_path / "model")
    first_version(folder)
    taken = []

    def after(index, name, args):
        taken.append((snapshot(folder, str(tmp_path / f"crash{len(taken):03d}")), name))

    steps = Steps(monkeypatch, after=after)

    def half_written():
        steps.busy = True
        try:
            after(None, "half a write", ())
        finally:
            steps.busy = False

    write_version(folder, 2, steps_between=half_written)
    monkeypatch.undo()
    assert len(taken) >= 15 and {"fsync", "rename", "replace", "remove", "rmdir"} <= set(
        name for _, name in taken)
    return taken


def as_if_dead(monkeypatch):
    """The temporary files of this process count as a crashed process's (as in a snapshot)."""
    monkeypatch.setattr(files, "_creator_alive", lambda name: False)


def test_a_crash_after_any_step_leaves_the_old_or_the_new_files(tmp_path, monkeypatch):
    old = None
    seen = []
    points = crash_points(tmp_path, monkeypatch)
    as_if_dead(monkeypatch)
    for crashed, step in points:
        version = read_version(crashed)  # what test.py would load right after the crash
        seen.append(version)
        finish_commits(crashed)  # what the next save does first
        assert read_version(crashed) == version, step
        assert leftovers(crashed) == [], step
        files = on_disk(crashed)
        assert files["other.txt"] == "not part of the save"
        assert ("stale.old" in files) == (version == 1), step
        if old is None:
            old = files if version == 1 else old
    # the old version until the commit, the new one from the commit on, and never back
    assert seen == sorted(seen) and seen[0] == 1 and seen[-1] == 2
    assert old is not None and old["weights.bin"] == "weights of version 1\n" * 100


@pytest.mark.parametrize("failure", [
    lambda: OSError(errno.ENOSPC, "No space left on device"),
    lambda: OSError(errno.EIO, "Input/output error"),
    KeyboardInterrupt, Crash], ids=["disk full", "I/O error", "Ctrl-C", "crash"])
def test_a_failure_at_any_step_leaves_the_old_or_the_new_files(tmp_path, monkeypatch, failure):
    count = len(crash_points(tmp_path / "count", monkeypatch)) - 1  # the half write is no step
    for step in range(count):
        folder = str(tmp_path / f"step{step:03d}")
        first_version(folder)
        Steps(monkeypatch, fail_at=step, failure=failure,
              fail_before=isinstance(failure(), OSError))
        try:
            write_version(folder, 2)
        except UserError as error:  # a disk error: one line naming the file or the folder
            assert "\n" not in str(error) and folder in str(error), str(error)
        except (KeyboardInterrupt, Crash):
            pass
        else:  # the step's failure was one the save expects (an existing folder, a clean-up)
            assert read_version(folder) == 2
        finally:
            monkeypatch.undo()
        as_if_dead(monkeypatch)
        version = read_version(folder)
        finish_commits(folder)
        assert read_version(folder) == version and leftovers(folder) == [], step
        write_version(folder, 3)  # the next save works
        assert read_version(folder) == 3 and leftovers(folder) == []


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    folder = str(tmp_path / "model")
    first_version(folder)
    before = on_disk(folder)
    real_fsync = os.fsync

    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError) as error:
        write_version(folder, 2)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert str(error.value) == (f"cannot write {os.path.join(folder, 'weights.bin')}: No space "
                                "left on device; the earlier version of every file saved with "
                                "it is unchanged")
    assert on_disk(folder) == before and leftovers(folder) == []


def test_a_crashed_process_leaves_temporary_files_that_the_next_save_removes(tmp_path):
    """A SIGKILL in the middle of a write: the staging folder of a dead process goes, that of
    a live one (another save in progress) stays."""
    folder = tmp_path / "model"
    first_version(str(folder))
    script = ("import os, sys, time; sys.path.insert(0, sys.argv[1]);"
              "from utils.files import commit_files, atomic_write;"
              "slow = lambda tmp: (open(tmp, 'w').write('partial'), time.sleep(60));"
              "import threading;"
              "threading.Thread(target=atomic_write, args=(sys.argv[2] + '/x.txt', slow)).start();"
              "commit_files(sys.argv[2], {'weights.bin': slow}, label='weights')")
    process = subprocess.Popen([sys.executable, "-c", script, ROOT, str(folder)])
    try:
        while len(leftovers(str(folder))) < 2:
            assert process.poll() is None
            time.sleep(0.01)
        live = leftovers(str(folder))
        finish_commits(str(folder))
        assert leftovers(str(folder)) == live  # its process still runs
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    finish_commits(str(folder))
    assert leftovers(str(folder)) == [] and read_version(str(folder)) == 1


def test_a_scratch_folder_on_a_failing_disk_is_one_line(tmp_path):
    folder = str(tmp_path / "export")
    with pytest.raises(UserError) as error:
        with scratch_folder(folder) as scratch:
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(scratch, "x"))
    assert str(error.value) == f"cannot write {os.path.join(folder, 'x')}: No space left on device"
    assert os.listdir(folder) == []


def test_file_names_that_are_not_utf8_print_as_escapes(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")
    assert printable(os.path.join("data", name)) == os.path.join("data", "caf\\xe9.png")
    assert printable("ok/été.png") == "ok/été.png"
    path = str(tmp_path / "out.csv")
    atomic_write_text(path, printable(name) + "\n")
    assert open(path, encoding="utf-8").read() == "caf\\xe9.png\n"
