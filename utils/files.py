"""Writing files atomically: a crash or a full disk never leaves a half-written file behind."""
import os
import tempfile
from typing import Callable


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename the temporary file onto `path` in one step."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(handle)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp_path):
        with open(tmp_path, "w", encoding="utf-8") as stream:
            stream.write(text)

    atomic_write(path, write)
