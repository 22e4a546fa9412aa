"""What ends a command early, and the one line that says so: a user's mistake (exit status 2),
a fault of the machine or of its files (1), a request to stop (128 + the signal), a loss
that is no longer a number. Run as a command, the line is printed and the process exits
with the status; called from Python (`rnn_mnist.main([...])`), the exception reaches the
caller, its text the same line without the prefix."""

import signal
import sys

PROGRAM = "rnn_mnist.py"  # every line of ours on the terminal starts with it
EXIT_USAGE = 2
EXIT_FAULT = 1
REASON_CHARS = 160  # of an error from a library, at most this much is quoted in the one line
# The signals that ask a command to stop, those of them the system has: Ctrl-C, SIGTERM (what
# `kill` and a batch system send) and, on Windows, Ctrl-Break.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK")
                     if hasattr(signal, name))


class Error(Exception):
    """A command ended early, for a reason its user can act on; `status` is the exit status."""
    status = EXIT_FAULT
    kind = "error"  # the word after the prefix; None: the text is a line of its own

    def line(self):
        return f"{PROGRAM}: {self.kind}: {self}" if self.kind else str(self)


class UsageError(Error):
    """A mistake in what the user gave us: exit status 2."""
    status = EXIT_USAGE


class Fault(Error):
    """A full disk, a damaged file, a folder that cannot be written: exit status 1."""


class Refused(UsageError):
    """Some of a command's inputs were refused, each for its own reason (the others were
    answered): a line each."""

    def __init__(self, errors):
        super().__init__("; ".join(map(str, errors)))
        self.errors = errors

    def line(self):
        return "\n".join(error.line() for error in self.errors)


class NotInstalled(UsageError, ImportError):
    """A package rnn_mnist needs is not installed in this Python (or has no build for it)."""


class Stopped(Error):
    """A run, or a command, stopped on a signal: what was kept, and how to go on."""
    kind = None

    def __init__(self, text, signum):
        super().__init__(text)
        self.signum, self.status = signum, 128 + signum


def say(text, kind="error"):
    """One line of ours on the terminal, where the text of an Error is not raised (another
    thread, a process about to be ended)."""
    print(f"{PROGRAM}: {kind}: {text}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    """Training stopped on request after saving a checkpoint; the signal, or None when
    the request came to another worker."""


class Diverged(Exception):
    """The loss stopped being a finite number."""
