"""User-facing errors: one clear line on stderr and a non-zero exit, never a deep traceback."""
import functools
import sys


class UserError(Exception):
    """A problem with the user's input (file, config, data) that the user can fix."""


def report_user_errors(main):
    """Wrap a script's main(): a UserError becomes `error: <message>` and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return wrapper
