"""Optional packages (requirements-extras.txt): imported only by the feature that needs them,
whose absence is one line saying what to install."""
import importlib
import importlib.util
import os
import re

from utils.errors import UserError

EXTRAS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "requirements-extras.txt")


def pinned(package: str) -> str:
    """`package==version` as requirements-extras.txt pins it (the bare name if it does not)."""
    try:
        with open(EXTRAS_FILE, encoding="utf-8") as stream:
            for line in stream:
                requirement = line.split("#")[0].strip()
                if re.split(r"[=<>~!\[ ]", requirement)[0].lower() == package.lower():
                    return requirement
    except OSError:
        pass
    return package


def install_hint(package: str, feature: str) -> str:
    return (f"{feature} needs {package}, which is not installed: pip install {pinned(package)} "
            "(or pip install -r requirements-extras.txt)")


def require(package: str, feature: str) -> None:
    """Raise a UserError naming what to install when `package` cannot be imported."""
    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UserError(install_hint(package, feature))


def import_optional(package: str, feature: str):
    """The imported module, or a UserError naming what to install."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise UserError(install_hint(package, feature)) from None
