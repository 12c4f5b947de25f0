"""Run a script and kill it with SIGKILL right after its N-th file-system step inside FOLDER:
what a `kill -9` or a power cut at that instant leaves behind.

    python tests/die_at_step.py FOLDER N script.py [args...]

The steps are the calls of fault_injection.HOOKED on paths inside FOLDER. A run that ends with
fewer steps prints `steps: <count> <names>` on stderr, so that a test can learn the steps of a
save first and then stop it at each of them.
"""
import atexit
import os
import runpy
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fault_injection import HOOKED  # noqa: E402


def main() -> None:
    folder, target = os.path.realpath(sys.argv[1]), int(sys.argv[2])
    steps = []

    def inside(argument) -> bool:
        if isinstance(argument, int):  # fsync of a file descriptor
            try:
                path = os.readlink(f"/proc/self/fd/{argument}")
            except OSError:
                return False
        else:
            path = os.path.realpath(os.fsdecode(argument))
        return path == folder or path.startswith(folder + os.sep)

    def hook(name, real):
        def step(*args, **kwargs):
            result = real(*args, **kwargs)
            if args and inside(args[0]):
                steps.append(name)
                if len(steps) == target:
                    os.kill(os.getpid(), signal.SIGKILL)
            return result
        return step

    for name in HOOKED:
        setattr(os, name, hook(name, getattr(os, name)))
    atexit.register(lambda: print(f"steps: {len(steps)} {' '.join(steps)}", file=sys.stderr))
    script = sys.argv[3]
    sys.argv = sys.argv[3:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
