"""The packages rnn_mnist needs, looked for before any of them is imported, so that a
Python without them (the virtual environment not activated, say) is told in one line
which are missing and how to install them, not shown a traceback."""

import importlib.util
import os
import sys

from .errors import NotInstalled

NEEDED = ("numpy", "tqdm", "tensorflow", "keras", "tensorboard", "matplotlib", "orjson")  # requirements.txt


def missing(names=NEEDED):
    return [name for name in names if importlib.util.find_spec(name) is None]


SUPPORTED_PYTHONS = ((3, 10), (3, 13))  # those TensorFlow 2.21 has builds for (requirements.txt)


def require_installed(command):
    """Raise NotInstalled (an ImportError) when a needed package is not installed in this
    Python; for the `command` line, print its one line and exit with status 2 instead."""
    try:
        check_installed()
    except NotInstalled as e:
        if not command:
            raise
        print(e.line(), file=sys.stderr)
        raise SystemExit(e.status) from None


def check_installed():
    absent = missing()
    low, high = SUPPORTED_PYTHONS
    if "tensorflow" in absent and not low <= sys.version_info[:2] <= high:
        raise NotInstalled(f"TensorFlow 2.21 has no build for Python "
                           f"{sys.version_info[0]}.{sys.version_info[1]} ({sys.executable}); make the "
                           f"virtual environment with Python {low[0]}.{low[1]} to {high[0]}.{high[1]}, "
                           "for example: python3.12 -m venv venv")
    if absent:
        here = os.path.relpath(os.path.join(os.path.dirname(__file__), "..", "requirements.txt"))
        raise NotInstalled(f"{', '.join(absent)} not installed in this Python ({sys.executable}); "
                           "activate the virtual environment that has them, or install them with: "
                           f"pip install -r {here}")
