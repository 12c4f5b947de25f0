"""Running scripts as child processes, a few at a time, each in its own slot (one GPU, or a share
of the CPU cores), and stopping them cleanly.

The children get a session of their own, so Ctrl-C in a terminal reaches the parent only; the
parent passes that signal (or a SIGTERM it received) to every running child once and waits until
each has saved its state and exited: train.py's checkpoint of a stop is never cut short. A parent
killed outright (SIGKILL) cannot pass anything on: on Linux its children then receive SIGTERM from
the kernel instead (`stop_with_parent`), rather than run on alone.
"""
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from utils.errors import UserError

STOPPED = -1  # the exit status reported for a command that was not started because of a stop
PARENT_ENV = "KDAD_PARENT_PID"  # set for the children: the process they stop with
PR_SET_PDEATHSIG = 1  # prctl(2)


def stop_with_parent() -> None:
    """In a script that Children.run started: receive SIGTERM (a stop that saves, like Ctrl-C)
    when the parent dies, e.g. run_all.py killed with SIGKILL (Linux; a no-op elsewhere)."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl in this C library
        return
    if str(os.getppid()) != parent:  # the parent died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class Slot:
    """Where one child runs: extra environment (CUDA_VISIBLE_DEVICES), config overrides that go
    before the user's (cpu_threads) and after them (device=gpu: what the slot needs), and whether
    its output is sent to a file."""
    name: str
    env: Tuple[Tuple[str, str], ...] = ()
    overrides: Tuple[str, ...] = ()
    own_output: bool = False
    required: Tuple[str, ...] = ()


def visible_gpus(visible: Optional[str], count: int) -> List[str]:
    """The CUDA_VISIBLE_DEVICES name of each GPU this process sees as 0 .. count-1: the entries of
    its own CUDA_VISIBLE_DEVICES (set by SLURM, Kubernetes or the user), else the numbers."""
    if visible is None:
        return [str(gpu) for gpu in range(count)]
    return [name.strip() for name in visible.split(",")][:count]  # CUDA stops at a bad entry


def make_slots(gpus: Optional[List[int]], jobs: int, cores: int,
               gpu_names: Sequence[str] = ()) -> List[Slot]:
    """One slot per GPU (numbered as this process sees them; `gpu_names` from visible_gpus), whose
    child sees that GPU alone and must run on it (device=gpu: no silent CPU run); or `jobs` slots
    sharing `cores` CPU cores (cpu_threads each). Several slots send each child's output to a
    file instead of mixing it on the terminal."""
    if gpus:
        for gpu in gpus:
            if gpu >= len(gpu_names):
                raise UserError(f"--gpus {gpu}: this process sees {len(gpu_names)} GPU(s)"
                                + (f", numbered 0 to {len(gpu_names) - 1}" if gpu_names else ""))
        return [Slot(f"GPU {gpu}" + (f" ({gpu_names[gpu]})" if gpu_names[gpu] != str(gpu)
                                     else ""),
                     env=(("CUDA_VISIBLE_DEVICES", gpu_names[gpu]),), required=("device=gpu",),
                     own_output=len(gpus) > 1) for gpu in gpus]
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if jobs == 1:
        return [Slot("CPU")]
    if jobs > cores:
        raise UserError(f"--jobs {jobs} is more than the {cores} CPU cores this process may use")
    threads = cores // jobs
    return [Slot(f"CPU ({threads} of {cores} cores)", overrides=(f"cpu_threads={threads}",),
                 own_output=True) for _ in range(jobs)]


class Children:
    """The running child processes; `stop` passes a signal to all of them and waits."""

    def __init__(self):
        self._lock = threading.Lock()
        self._live = set()
        self._stopping = False

    def run(self, command: List[str], env: Dict[str, str], output: Optional[str] = None) -> int:
        """Run `command` to its end (output appended to the file `output`, else inherited);
        its exit status, or STOPPED when a stop came first."""
        stream = open(output, "a", encoding="utf-8") if output else None
        try:
            with self._lock:
                if self._stopping:
                    return STOPPED
                env = {**env, PARENT_ENV: str(os.getpid())}
                process = subprocess.Popen(command, env=env, stdout=stream,
                                           stderr=subprocess.STDOUT if stream else None,
                                           start_new_session=True)
                self._live.add(process)
            try:
                return process.wait()
            finally:
                with self._lock:
                    self._live.discard(process)
        finally:
            if stream is not None:
                stream.close()

    def stop(self, signum: int = signal.SIGINT) -> None:
        with self._lock:
            self._stopping = True
            live = list(self._live)
        for process in live:
            if process.poll() is None:
                process.send_signal(signum)
        for process in live:
            process.wait()


def run_in_slots(jobs: Sequence, slots: List[Slot], run_one: Callable, on_done: Callable,
                 children: Children) -> None:
    """run_one(job, slot) for every job, as many at once as there are slots, each slot used by
    one job at a time; on_done(job, result) in this thread as each finishes. Ctrl-C or SIGTERM
    here stops the children with the same signal, waits for them and is raised again."""
    free = queue.Queue()
    for slot in slots:
        free.put(slot)

    def task(job):
        slot = free.get()
        try:
            return run_one(job, slot)
        finally:
            free.put(slot)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = {pool.submit(task, job): job for job in jobs}
        try:
            for future in as_completed(futures):
                on_done(futures[future], future.result())
        except KeyboardInterrupt as stop:
            pool.shutdown(wait=False, cancel_futures=True)
            children.stop(getattr(stop, "signum", signal.SIGINT))
            raise
