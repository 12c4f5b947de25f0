"""Writing files atomically: a crash or a full disk never leaves a half-written file behind, and
files that belong together (a model's weights and its .json) are committed together.

One file is written under a temporary name, synced, and renamed onto its own name. Several files
are written into a staging folder `.saving-<label>-<pid>-...` beside them, each synced; renaming
that folder to `.commit-<label>` is the single step that commits them all, after which its files
are moved into place and it is removed. A crash before that rename leaves every earlier file as it
was (the staging folder is removed by the next save); a crash after it is finished by the next save
into the folder (`finish_commits`), and until then readers take the committed files from
`.commit-<label>` (`current_path`), so that they see all the old files or all the new ones.
"""
import contextlib
import errno
import json
import os
import shutil
import tempfile
from typing import Callable, Dict, Iterator, Sequence

from utils.errors import UserError

TMP_PREFIX, STAGING_PREFIX, COMMITTED_PREFIX = ".tmp-", ".saving-", ".commit-"
PLAN_FILE = ".plan"  # inside a committed folder: the files to move, in order, and to remove


def _new_file_mode(path: str) -> int:
    """The permissions `path` has, or that open() would give a new file (mkstemp's are 0600)."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _sync_folder(folder: str) -> None:
    """Make the renames in `folder` durable (a folder's entries are synced through its own fd;
    Windows, and file systems that cannot sync a folder, have nothing more to do)."""
    if os.name == "nt":
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(handle)


def _write_synced(path: str, write: Callable[[str], None], mode: int) -> None:
    write(path)
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())
    os.chmod(path, mode)


def _cannot_write(path: str, error: OSError, what: str = "the earlier version") -> UserError:
    kept = f"; {what} is unchanged" if os.path.exists(path) else ""
    return UserError(f"cannot write {path}: {error.strerror or error}{kept}")


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename the temporary file onto `path` in one step. An OSError
    (disk full, no permission) is a UserError naming `path`; `path` is then as it was."""
    tmp_path = None
    try:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        handle, tmp_path = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-",
                                            suffix=os.path.basename(path), dir=folder)
        os.close(handle)
        _write_synced(tmp_path, write, _new_file_mode(path))
        os.replace(tmp_path, path)
        tmp_path = None
        _sync_folder(folder)
    except OSError as error:
        raise _cannot_write(path, error) from None
    finally:
        if tmp_path is not None and os.path.exists(tmp_path):
            os.remove(tmp_path)


def printable(path: str) -> str:
    """`path` as valid UTF-8 text for CSV files, captions and logs: bytes of a file name that are
    not UTF-8 (kept by Python as lone surrogates) are shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def bytes_writer(data: bytes) -> Callable[[str], None]:
    """A `write(tmp_path)` for atomic_write and commit_files that writes `data`."""
    def write(tmp_path):
        with open(tmp_path, "wb") as stream:
            stream.write(data)
    return write


def moving_writer(source: str) -> Callable[[str], None]:
    """A `write(tmp_path)` that moves the finished file `source` (on the same disk) there."""
    return lambda tmp_path: os.replace(source, tmp_path)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, bytes_writer(text.encode("utf-8")))


@contextlib.contextmanager
def scratch_folder(folder: str) -> Iterator[str]:
    """A temporary folder inside `folder` (so that its files can be renamed into place), removed
    afterwards; an OSError inside the block is a UserError naming the file."""
    try:
        os.makedirs(folder, exist_ok=True)
        path = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=folder)
    except OSError as error:
        raise _cannot_write(folder, error, "its content") from None
    try:
        yield path
    except OSError as error:  # named as the file it was to become
        target = os.path.join(folder, os.path.relpath(error.filename, path)) \
            if error.filename else folder
        raise _cannot_write(target, error, "the earlier version") from None
    finally:
        shutil.rmtree(path, ignore_errors=True)


def commit_files(folder: str, writers: Dict[str, Callable[[str], None]], label: str,
                 remove: Sequence[str] = ()) -> None:
    """Write the files `writers` names in `folder` (name -> write(tmp_path), moved into place in
    that order) and remove the files `remove` names, all as one transaction (see the module's
    docstring). An OSError before the commit is a UserError naming the file; nothing has then
    changed in `folder`."""
    plan = {"move": list(writers), "remove": list(remove)}
    staging, current = None, next(iter(writers))
    try:
        os.makedirs(folder, exist_ok=True)
        finish_commits(folder)
        staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{label}-{os.getpid()}-", dir=folder)
        for current, write in writers.items():
            _write_synced(os.path.join(staging, current), write,
                          _new_file_mode(os.path.join(folder, current)))
        _write_synced(os.path.join(staging, PLAN_FILE),
                      bytes_writer(json.dumps(plan).encode("utf-8")), 0o644)
        _sync_folder(staging)
        committed = os.path.join(folder, COMMITTED_PREFIX + label)
        os.rename(staging, committed)  # the commit: from here on the new files are the files
        staging = None
        _sync_folder(folder)
    except OSError as error:
        raise _cannot_write(os.path.join(folder, current), error,
                            "the earlier version of every file saved with it") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    _finish(committed)


def _finish(committed: str) -> None:
    """Move a committed folder's files into place, remove what it replaces, remove the folder;
    repeating this after a crash part way through completes it."""
    folder, target = os.path.dirname(committed), PLAN_FILE
    try:
        if not os.path.exists(os.path.join(committed, PLAN_FILE)):  # all done but the folder
            os.rmdir(committed)
            return
        with open(os.path.join(committed, PLAN_FILE), encoding="utf-8") as stream:
            plan = json.load(stream)
        for target in plan["move"]:
            if os.path.exists(os.path.join(committed, target)):
                os.replace(os.path.join(committed, target), os.path.join(folder, target))
        for target in plan["remove"]:
            if os.path.exists(os.path.join(folder, target)):
                os.remove(os.path.join(folder, target))
        _sync_folder(folder)
        os.remove(os.path.join(committed, PLAN_FILE))
        os.rmdir(committed)
        _sync_folder(folder)
    except OSError as error:
        raise UserError(f"cannot finish saving {os.path.join(folder, target)}: "
                        f"{error.strerror or error}; the saved files are complete in "
                        f"{committed}, and the next save into {folder} moves them") from None


def _creator_alive(name: str) -> bool:
    """Whether the process whose id is in a temporary name (`.saving-<label>-<pid>-...`,
    `.tmp-<pid>-...`) still runs; a name without one counts as alive."""
    for part in name.split("-"):
        if part.isdigit():
            try:
                os.kill(int(part), 0)
            except ProcessLookupError:
                return False
            except PermissionError:  # another user's process
                return True
            return True
    return True


def finish_commits(folder: str, below: bool = False) -> None:
    """Complete the saves into `folder` that a crash cut short after their commit, and remove the
    temporary files of crashed processes (those before it), in its sub-folders too if `below`
    (where the pictures of predict.py go)."""
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(COMMITTED_PREFIX) and os.path.isdir(path):
            _finish(path)
        elif name.startswith(STAGING_PREFIX) and not _creator_alive(name[len(STAGING_PREFIX):]):
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(TMP_PREFIX) and not _creator_alive(name[len(TMP_PREFIX):]):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
        elif below and os.path.isdir(path) and not os.path.islink(path) \
                and not name.startswith("."):
            finish_commits(path, below=True)


def current_path(path: str) -> str:
    """Where the newest committed version of `path` is: its own place, or a `.commit-*` folder
    beside it whose move into place a crash interrupted (a path that does not exist when that
    save removes the file)."""
    folder, name = os.path.split(path)
    try:
        entries = sorted(os.listdir(folder or "."))
    except OSError:
        return path
    for entry in entries:
        if not entry.startswith(COMMITTED_PREFIX):
            continue
        candidate = os.path.join(folder, entry, name)
        if os.path.isfile(candidate) or name in _planned_removals(os.path.join(folder, entry)):
            return candidate
    return path


def _planned_removals(committed: str) -> list:
    try:
        with open(os.path.join(committed, PLAN_FILE), encoding="utf-8") as stream:
            return json.load(stream)["remove"]
    except (OSError, ValueError, KeyError):  # finished meanwhile
        return []
