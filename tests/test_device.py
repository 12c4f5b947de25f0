"""Device set-up: glibc's malloc keeps freed memory for reuse; the training step's CPU threads."""
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


@pytest.mark.parametrize("settings, processes, expected", [
    ({}, 1, 1),                                           # the default: one thread
    ({"train_cpu_threads": 0}, 1, 4),                     # automatic: all cores
    ({"train_cpu_threads": 0}, 2, 2),                     # each training process its share
    ({"train_cpu_threads": 0, "cpu_threads": 3}, 2, 3),   # a run_all.py slot's share, as given
    ({"train_cpu_threads": 0, "engine": "eager"}, 1, 1),  # eager convolutions: one thread
    ({"train_cpu_threads": 2, "engine": "eager"}, 1, 2),  # an explicit count always wins
])
def test_training_threads(monkeypatch, settings, processes, expected):
    import paddle
    from utils import device
    from utils.config import build_config
    chosen = []
    monkeypatch.setattr(device, "usable_cores", lambda: 4)
    monkeypatch.setattr(paddle.base.core, "set_num_threads", chosen.append)
    config = build_config(base={"device": "cpu", **settings})
    device.use_training_threads(config, "cpu", processes)
    device.use_training_threads(config, "gpu", processes)  # threads mean nothing there
    assert chosen == [expected]
