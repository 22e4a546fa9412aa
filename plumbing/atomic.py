"""Files written whole or not at all: a crash, a kill or a power cut leaves the old
file or the new one, never half of one."""

import contextlib
import json
import os


@contextlib.contextmanager
def replaced_atomically(path, partial=None):
    """Yield the name of a partial file to write; once written, it is flushed to the disk
    and renamed over `path`, and the rename made durable too. Whatever goes wrong, no
    partial file stays behind."""
    partial = partial or path + ".part"
    try:
        yield partial
        with open(partial, "rb") as written:
            os.fsync(written.fileno())  # the data on the disk before the name points at it
        os.replace(partial, path)
        if hasattr(os, "O_DIRECTORY"):  # and the rename itself, where a folder can be opened to
            # fsync it (POSIX); Windows cannot, and its NTFS journal keeps the rename atomic
            folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_json(path, obj):
    with replaced_atomically(path) as partial, open(partial, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
