"""User-facing errors: one clear line on stderr and a non-zero exit, never a deep traceback."""
import functools
import signal
import sys
import threading

# Ctrl-C, and the polite stop that `kill`, job schedulers and pre-emptible machines send first
STOP_SIGNALS = {signal.SIGINT: ("interrupted", signal.default_int_handler),
                signal.SIGTERM: ("terminated", signal.SIG_DFL)}


class UserError(Exception):
    """A problem with the user's input (file, config, data) that the user can fix."""


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: stop like Ctrl-C does."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = signum


def stop_word(stop: BaseException) -> str:
    """'interrupted' (Ctrl-C) or 'terminated' (SIGTERM), for messages."""
    return STOP_SIGNALS[getattr(stop, "signum", signal.SIGINT)][0]


def stop_exit(stop: BaseException) -> int:
    """The shell's exit status for a process stopped by that signal: 130 or 143."""
    return 128 + int(getattr(stop, "signum", signal.SIGINT))


def report_user_errors(main):
    """Wrap a script's main(): a UserError becomes `error: <message>` and exit status 2; Ctrl-C
    becomes `interrupted` and exit status 130, SIGTERM `terminated` and 143."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        received = []

        def on_stop(signum, frame):
            received.append(signum)
            raise Stopped(signum)

        # Ctrl-C inside some of Paddle's C++ calls comes out as another exception (SystemError,
        # RuntimeError); noting the signal tells such an error apart from a real failure. A
        # signal that the caller chose to handle or ignore is left alone.
        watched = [signum for signum, (_, default) in STOP_SIGNALS.items()
                   if threading.current_thread() is threading.main_thread()
                   and signal.getsignal(signum) is default]
        for signum in watched:
            signal.signal(signum, on_stop)
        for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 stays printable
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")
        from utils.children import stop_with_parent  # (it imports this module)
        stop_with_parent()
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as stop:
            print(stop_word(stop), file=sys.stderr)
            sys.exit(stop_exit(stop))
        except Exception:
            if received:
                stop = Stopped(received[0])
                print(stop_word(stop), file=sys.stderr)
                sys.exit(stop_exit(stop))
            raise
        finally:
            for signum in watched:
                signal.signal(signum, STOP_SIGNALS[signum][1])

    return wrapper
