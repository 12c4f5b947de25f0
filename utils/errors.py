"""User-facing errors: one clear line on stderr and a non-zero exit, never a deep traceback."""
import functools
import signal
import sys
import threading

INTERRUPTED_EXIT = 130  # the shell's convention for a process stopped by Ctrl-C (SIGINT)


class UserError(Exception):
    """A problem with the user's input (file, config, data) that the user can fix."""


def report_user_errors(main):
    """Wrap a script's main(): a UserError becomes `error: <message>` and exit status 2; Ctrl-C
    becomes `interrupted` and exit status 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        interrupts = []

        def on_interrupt(signum, frame):
            interrupts.append(signum)
            raise KeyboardInterrupt

        # Ctrl-C inside some of Paddle's C++ calls comes out as another exception (SystemError,
        # RuntimeError); noting the signal tells such an error apart from a real failure.
        watch = (threading.current_thread() is threading.main_thread()
                 and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if watch:
            signal.signal(signal.SIGINT, on_interrupt)
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(INTERRUPTED_EXIT)
        except Exception:
            if interrupts:
                print("interrupted", file=sys.stderr)
                sys.exit(INTERRUPTED_EXIT)
            raise
        finally:
            if watch:
                signal.signal(signal.SIGINT, signal.default_int_handler)

    return wrapper
