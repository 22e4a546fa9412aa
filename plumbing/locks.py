"""A run folder held by one process at a time, with a lock that the system lets go of
when the process ends, however it ends (a lock file alone would outlive a kill, and the
next run would have to guess whether its owner still lives): flock on the folder itself
where the system has it (Linux, macOS), a byte lock (msvcrt.locking) on a file in the
folder on Windows. The standard library has no lock for both; the `filelock` package
would add a dependency and a lock file in every run folder on Linux and macOS too.
"""

import contextlib
import os

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # every system but Windows
    msvcrt = None

LOCK_FILE = "rnn_mnist.lock"  # in a run folder, where the folder itself cannot be locked


class Busy(Exception):
    """Another process holds the folder."""


@contextlib.contextmanager
def held(folder):
    """Hold `folder` for this process while the block runs; Busy when another process holds it.
    A lock left by a process that was killed is gone with it, so the next run takes the folder."""
    if fcntl is not None:
        with flocked(folder):
            yield
    elif msvcrt is not None:
        with byte_locked(os.path.join(folder, LOCK_FILE)):
            yield
    else:  # a system with neither: the run goes on unguarded, as before this lock existed
        yield


@contextlib.contextmanager
def flocked(folder):
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(folder) from None
        yield
    finally:
        os.close(descriptor)  # and with it the lock


@contextlib.contextmanager
def byte_locked(path):
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)  # the first byte, from position 0
        except OSError:  # EACCES: another process holds it
            raise Busy(path) from None
        try:
            yield
        finally:
            os.lseek(descriptor, 0, os.SEEK_SET)
            msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)  # Windows frees a closed file's
            # locks only when it gets round to it: let go first
    finally:
        os.close(descriptor)
