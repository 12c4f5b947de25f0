"""Logging to the console and to a file (e.g. logs/<class>_train.log)."""
import logging
import os
import sys

from utils.errors import UserError


class _LogFile(logging.FileHandler):
    """A log file that, once it cannot be written (a full disk), says so in one line and is left
    alone; the run goes on, and its own saves report the disk if it stays full."""

    failed = False

    def emit(self, record):
        if not self.failed:
            super().emit(record)

    def handleError(self, record):
        error = sys.exc_info()[1]
        self.failed = True
        print(f"warning: cannot write the log file {self.baseFilename}: "
              f"{getattr(error, 'strerror', None) or error}; logging to the terminal only",
              file=sys.stderr)


def get_logger(name: str, log_file: str = None) -> logging.Logger:
    logger = logging.getLogger(f"kdad.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            file_handler = _LogFile(log_file, mode="a", encoding="utf-8",
                                    errors="backslashreplace")
        except OSError as error:
            raise UserError(f"cannot write the log file {log_file}: "
                            f"{error.strerror or error}") from None
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(file_handler)
    return logger
