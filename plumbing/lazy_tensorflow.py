"""TensorFlow and Keras, imported on first use and quietly; its log held back for a
whole command; its threads set.

Every module takes `tf` and `keras` from here: they stand for the modules until one
of their attributes is first asked for, so `import rnn_mnist` and `--help` load no
TensorFlow.
"""

import contextlib
import os
import sys
import tempfile


def import_tensorflow_quietly():
    """Import TensorFlow with its start-up chatter held back; return what it said.

    TensorFlow 2.21 writes its oneDNN notice and absl warnings straight to file
    descriptor 2 while it is imported, past TF_CPP_MIN_LOG_LEVEL, so Python's
    `sys.stderr` cannot catch them: the descriptor itself is pointed at a
    temporary file for the import. `--verbose` prints what was held back; an
    import that fails prints it at once, so a real error is never hidden.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the runtime's own errors too: this
    # tool says what went wrong in one line (with --verbose, everything TensorFlow says)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            import keras  # noqa: F401  (imports TensorFlow, its backend)
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        return held.read().decode(errors="replace")


class ImportedOnFirstUse:
    """Stands for `tf` or `keras` until first used, then imports both and takes their place.

    Importing TensorFlow takes seconds, so `--help`, a misspelt command or a bad
    flag would wait for it before saying a word. `importlib.util.LazyLoader` defers
    an import the same way, but it gives no hold on the moment the module runs,
    which is when TensorFlow's chatter has to be held back (above).
    """

    startup_log = None  # what TensorFlow said while it was imported

    def __init__(self, name):
        self.name = name

    def __getattr__(self, attribute):
        return getattr(import_tensorflow()[self.name], attribute)


def import_tensorflow():
    """Import TensorFlow and Keras once, quietly; {"tf": ..., "keras": ...}."""
    global tf, keras  # the stand-ins give way to the real modules (in this module)
    if ImportedOnFirstUse.startup_log is None:
        ImportedOnFirstUse.startup_log = import_tensorflow_quietly()
        import keras as keras_module
        import tensorflow as tf_module
        tf, keras = tf_module, keras_module
    return {"tf": tf, "keras": keras}


tf, keras = ImportedOnFirstUse("tf"), ImportedOnFirstUse("keras")


@contextlib.contextmanager
def runtime_log_held(verbose, until_exit=False):
    """For the whole command, TensorFlow's runtime log is held back; this tool's own lines
    still reach the terminal. With `verbose`, nothing is held; `until_exit`, for the
    process that is the command: held to its end, when TensorFlow's threads still log.

    Once imported, TensorFlow's C++ runtime (collectives, gRPC between workers) logs
    through absl straight to file descriptor 2 at any moment, past TF_CPP_MIN_LOG_LEVEL:
    a lost worker's stop came after six lines of it. So the descriptor points at
    /dev/null, and Python's `sys.stderr` writes to a copy of the terminal's descriptor.
    Only where `sys.stderr` is descriptor 2 (a test that captures it is left alone).
    """
    try:
        ours = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        ours = False
    if verbose or not ours:
        yield
        return
    previous = sys.stderr
    previous.flush()
    terminal = os.dup(2)
    sys.stderr = open(terminal, "w", encoding=previous.encoding, errors=previous.errors,
                      buffering=1)  # line-buffered, as a terminal's stderr
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        sys.stderr.flush()
        if not until_exit:
            os.dup2(terminal, 2)
            sys.stderr.close()
            sys.stderr = previous



def configure_tensorflow(intra_op, inter_op):
    """Set TensorFlow's thread pools (possible only before its first operation runs; 0 leaves
    one to TensorFlow), and
    turn off its graph optimizer (Grappler): on this model's graphs it costs a second at
    the first step and gains nothing measurable afterwards (bench/README.md)."""
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # already running, e.g. a second run in one Python process
        pass


def quiet_tensorflow(verbose):
    """Import TensorFlow; with `verbose`, show what it said meanwhile, else keep its logger quiet."""
    if verbose and ImportedOnFirstUse.startup_log is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    import_tensorflow()
    if verbose:
        sys.stderr.write(ImportedOnFirstUse.startup_log)
    else:
        tf.get_logger().setLevel("ERROR")
