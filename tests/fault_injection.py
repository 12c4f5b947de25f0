"""Stopping a save at each of its steps: every file-system call that utils/files.py makes (mkdir,
fsync, chmod, rename, replace, remove, rmdir) is a step, and a test can copy the folder after
any step (what a crash there leaves on disk) or make that step fail."""
import os
import shutil
import subprocess
from typing import Callable, List, Optional

from script_helpers import run_script

HOOKED = ("mkdir", "fsync", "chmod", "rename", "replace", "remove", "unlink", "rmdir")


class Crash(BaseException):
    """The process dying at a step: nothing catches it on the way out (like SIGKILL would)."""


class Steps:
    """Counts the hooked os calls; `after(index, name, args)` runs after each one that succeeded,
    and `fail_at`, when given, is the index of the step that raises `failure` instead."""

    def __init__(self, monkeypatch, after: Optional[Callable] = None, fail_at: int = None,
                 failure: Callable[[], BaseException] = None, fail_before: bool = True):
        self.names: List[str] = []
        self.after, self.fail_at, self.failure = after, fail_at, failure
        self.fail_before = fail_before  # the step fails (not done); else it is done, then raises
        self.busy = False
        for name in HOOKED:
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def _wrap(self, name: str, real: Callable) -> Callable:
        def step(*args, **kwargs):
            if self.busy:
                return real(*args, **kwargs)
            index = len(self.names)
            self.names.append(name)
            if index == self.fail_at and self.fail_before:
                raise self.failure()
            result = real(*args, **kwargs)
            if index == self.fail_at:
                raise self.failure()
            if self.after is not None:
                self.busy = True
                try:
                    self.after(index, name, args)
                finally:
                    self.busy = False
            return result
        return step


def snapshot(folder: str, destination: str, link_large: bool = False) -> str:
    """A copy of `folder` as a crash at this moment would leave it. With `link_large`, files of a
    megabyte or more outside temporary folders are hard-linked (the saves never change a file in
    place: they write new ones and rename them)."""
    def copy(source, target):
        hidden = any(part.startswith(".") for part in os.path.relpath(source, folder).split(os.sep))
        if link_large and not hidden and os.path.getsize(source) >= 1 << 20:
            os.link(source, target)
        else:
            shutil.copy2(source, target)
    shutil.copytree(folder, destination, symlinks=True, copy_function=copy)
    return destination


def leftovers(folder: str) -> List[str]:
    """Temporary files or folders of a save (anything hidden but the run lock)."""
    return sorted(name for name in os.listdir(folder) if name.startswith(".") and name != ".lock")


def run_until_killed(folder: str, step: int, args: list) -> subprocess.CompletedProcess:
    """`python <args>` killed with SIGKILL right after its step-th file-system step in
    `folder` (tests/die_at_step.py)."""
    return run_script([os.path.join("tests", "die_at_step.py"), folder, str(step), *args],
                      timeout=600)


def steps_of(completed: subprocess.CompletedProcess) -> List[str]:
    """The names of the steps that die_at_step.py counted in a run it did not stop."""
    line = [line for line in completed.stderr.splitlines() if line.startswith("steps: ")][-1]
    return line.split()[2:]
