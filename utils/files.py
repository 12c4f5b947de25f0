"""Writing files atomically: a crash or a full disk never leaves a half-written file behind."""
import os
import tempfile
from typing import Callable

from utils.errors import UserError


def _new_file_mode(path: str) -> int:
    """The permissions `path` has, or that open() would give a new file (mkstemp's are 0600)."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename the temporary file onto `path` in one step. An OSError
    (disk full, no permission) is a UserError naming `path`; `path` is then as it was."""
    tmp_path = None
    try:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path),
                                            dir=folder)
        os.close(handle)
        write(tmp_path)
        with open(tmp_path, "rb") as stream:
            os.fsync(stream.fileno())
        os.chmod(tmp_path, _new_file_mode(path))
        os.replace(tmp_path, path)
    except OSError as error:
        kept = "; the earlier version is unchanged" if os.path.exists(path) else ""
        raise UserError(f"cannot write {path}: {error.strerror or error}{kept}") from None
    finally:
        if tmp_path is not None and os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp_path):
        with open(tmp_path, "w", encoding="utf-8") as stream:
            stream.write(text)

    atomic_write(path, write)
