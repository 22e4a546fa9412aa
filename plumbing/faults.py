"""Faults of the machine while a run writes its folder (a full disk, a folder made read-only)
and stops that come outside the training loop: each ends the run with one line that says
what was kept and how to go on, and leaves no partial file behind.

Inside the training loop a stop is a request the loop honours at a consistent point
(runs.StopRequest); before and after it, Ctrl-C and SIGTERM stop at once.
"""

import contextlib
import errno
import signal

from .errors import STOP_SIGNALS, Fault, Interrupted, Stopped
from .lazy_tensorflow import tf
from .runs import kept, remove_partial_files

# What an error from the file system or from TensorFlow's writers says, by its errno.
FAULTS = {errno.ENOSPC: ("No space left on device", "the disk of {folder} is full",
                         "make room on it"),
          errno.EDQUOT: ("Disk quota exceeded", "the disk quota of {folder} is used up",
                         "make room in it"),
          errno.EROFS: ("Read-only file system", "{folder} is on a read-only file system",
                        "make it writable"),
          errno.EACCES: ("Permission denied", "{folder} cannot be written (permission denied)",
                         "make it writable"),
          errno.EPERM: ("Operation not permitted", "{folder} cannot be written (operation not "
                        "permitted)", "make it writable")}


@contextlib.contextmanager
def stops_at_once():
    """Ctrl-C, SIGTERM (and Ctrl-Break on Windows) raise Interrupted wherever the run stands
    (SIGTERM would otherwise end it without a word)."""
    def stop(signum, frame):
        raise Interrupted(signum)
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def fault_of(error):
    """The errno of a full disk or an unwritable folder that `error` reports, or None."""
    if isinstance(error, OSError) and error.errno in FAULTS:
        return error.errno
    if isinstance(error, (OSError, tf.errors.OpError)):
        text = str(error)
        return next((number for number, (said, _, _) in FAULTS.items() if said in text), None)
    return None


@contextlib.contextmanager
def said_in_one_line(settings, run_dir):
    """A stop outside the training loop, or a full disk or unwritable folder anywhere in the
    run: one line (problem, what was kept, what to do); the partial files removed."""
    try:
        yield
    except (Interrupted, KeyboardInterrupt) as stop:  # KeyboardInterrupt: a second Ctrl-C
        signum = stop.args[0] if isinstance(stop, Interrupted) else signal.SIGINT
        what, how = kept(settings, run_dir)
        raise Stopped(f"{signal.Signals(signum).name} received: stopped at once; {what}."
                      + (f"\n{how}" if how else ""), signum) from None
    except Exception as e:
        number = fault_of(e)
        if number is None:
            raise
        remove_partial_files(run_dir)
        _, problem, fix = FAULTS[number]
        what, how = kept(settings, run_dir)
        raise Fault(f"{problem.format(folder=run_dir)}; {what}.\n"
                    f"{fix}, then {how or 'run the same command again'}") from None
