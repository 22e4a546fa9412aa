"""What ends a command early: a user's mistake (one line, exit status 2), a fault of the
machine or of its files (one line, exit status 1), a request to stop, a loss that is no
longer a number."""

import signal

EXIT_USAGE = 2
EXIT_FAULT = 1
REASON_CHARS = 160  # of an error from a library, at most this much is quoted in the one line
# The signals that ask a command to stop, those of them the system has: Ctrl-C, SIGTERM (what
# `kill` and a batch system send) and, on Windows, Ctrl-Break.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK")
                     if hasattr(signal, name))


class UsageError(Exception):
    """A mistake in what the user gave us: reported in one line, exit status 2."""


class Fault(Exception):
    """A full disk, a damaged file, a folder that cannot be written: one line, exit status 1."""


class Interrupted(Exception):
    """Training stopped on request after saving a checkpoint; the signal, or None when
    the request came to another worker."""


class Diverged(Exception):
    """The loss stopped being a finite number."""
