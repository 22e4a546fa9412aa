"""What ends a command early: a user's mistake (one line, exit status 2), a request to
stop, a loss that is no longer a number."""

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in what the user gave us: reported in one line, exit status 2."""


class Interrupted(Exception):
    """Training stopped on request after saving a checkpoint; the signal, or None when
    the request came to another worker."""


class Diverged(Exception):
    """The loss stopped being a finite number."""
