"""Device set-up: glibc's malloc keeps freed memory for reuse."""
import subprocess
import sys

import pytest

from conftest import ROOT

# In a fresh process (the setting is process-wide): how glibc serves and frees a 64 MB block,
# from its own statistics (mallinfo2: hblks = blocks mapped on their own, arena = heap size).
_PROBE = """import ctypes, sys
sys.path.insert(0, {root!r})
from utils.device import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
if {mode!r} == "keep":
    assert keep_freed_memory()
elif {mode!r} == "heap only":  # blocks from the heap, but glibc's usual trimming of it
    libc.mallopt(-4, 0)
before = libc.mallinfo2()
block = libc.malloc(64 << 20)
during = libc.mallinfo2()
libc.free(ctypes.c_void_p(block))
after = libc.mallinfo2()
print(during.hblks - before.hblks, after.arena < during.arena)
"""


def probe(mode: str) -> list:
    """[blocks mapped for the 64 MB request, whether freeing it shrank the heap]."""
    done = subprocess.run([sys.executable, "-c", _PROBE.format(root=ROOT, mode=mode)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_large_blocks_come_from_the_heap_and_stay_there():
    """Without the setting glibc maps a 64 MB block on its own and unmaps it when freed (the
    pages come back zero-filled next time); a heap block would be trimmed off when freed; with
    the setting, the block comes from the heap, which keeps it after the free."""
    assert probe("default") == ["1", "False"]
    assert probe("heap only") == ["0", "True"]
    assert probe("keep") == ["0", "False"]
