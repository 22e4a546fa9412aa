"""rnn_mnist: an LSTM that reads each MNIST digit as a sequence of 28 rows.

    pip install -r requirements.txt
    python rnn_mnist.py                                   # download MNIST, train, test
    python rnn_mnist.py --data ../shared/data/mnist.npz   # offline, from a local copy
    python rnn_mnist.py --resume                          # continue the newest run
    tensorboard --logdir Visualize                        # watch and compare the runs
    python rnn_mnist.py evaluate --data mnist.npz         # test the newest model again
    python rnn_mnist.py predict my_digit.png              # read your own handwriting
    python rnn_mnist.py export --tflite                   # a SavedModel for serving
    python rnn_mnist.py serve                             # draw a digit, watch it read
    TF_CONFIG='{"cluster": ...}' python rnn_mnist.py      # one of several workers
    python -m pytest tests                                # the test suite

Each 28x28 image is read top to bottom, one row of 28 pixels per timestep. The
recurrent layer's last output feeds a dense softmax over the ten digits; the loss
is cross-entropy, the gradients flow back through all 28 steps, and Adam follows
a cosine learning-rate schedule, on tf.distribute: a replica per CPU core or GPU,
or a worker per machine. Every run gets its own folder under `Visualize/` with
TensorBoard logs, the resolved config, the best model and the test metrics.
"""

import argparse
import collections
import contextlib
import datetime
import difflib
import gzip
import hashlib
import http.server
import json
import os
import platform
import queue
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
import zipfile
import zlib


import numpy as np
from tqdm.auto import tqdm


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

    Importing TensorFlow takes about 3 s, so `--help`, a misspelt command or a bad
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
    global tf, keras  # the stand-ins below give way to the real modules
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

# ----------------------------------------------------------------------------
# Constants: the facts of MNIST

TIMESTEPS = 28  # image rows, read one per step
FEATURES = 28  # pixels in a row
NUM_CLASSES = 10
MAX_PIXEL = 255

MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {  # split -> (images file, labels file), as published
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

DEFAULT_LOGDIR = "Visualize"
MODEL_FILE = "model.keras"  # in each run folder: the best model by validation accuracy
EXIT_USAGE = 2
INTRA_OP_THREADS = 1  # threads per TensorFlow operation: this model's are too small to split
INTER_OP_THREADS = 2  # operations at once in evaluate and predict: one per core of 2
STEPS_PER_EXECUTION = 16  # training steps per call of the graph: 1.2x the samples/s of 1 a call


class UsageError(Exception):
    """A mistake in what the user gave us: reported in one line, exit status 2."""


# ----------------------------------------------------------------------------
# Data


def keras_cache_dir():
    """The folder where `keras.datasets` caches its downloads, so both share one copy."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "datasets")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url, sha256, cache_dir, filename="mnist.npz"):
    """Return the path of a verified copy of `url` in `cache_dir`, downloading it if needed.

    Written here rather than with `keras.utils.get_file`, which keeps a download
    that fails its hash check in the cache: this one writes to a temporary file,
    checks the hash, and only then moves it into place, so a bad file is never kept.
    """
    target = os.path.join(cache_dir, filename)
    if os.path.isfile(target) and sha256_of(target) == sha256:
        return target
    offline_hint = "pass --data PATH to read a local mnist.npz or a folder of the IDX files"
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=cache_dir, prefix=f".{filename}.", suffix=".part")
    except OSError as e:
        raise UsageError(f"cannot write the download cache {cache_dir} ({e.strerror}); "
                         f"set KERAS_HOME to a writable folder, or {offline_hint}") from None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        got = sha256_of(partial)
        if got != sha256:
            raise UsageError(f"the file downloaded from {url} has sha256 {got[:12]}..., not the "
                             f"published {sha256[:12]}...; it was not kept. Try again, or {offline_hint}")
        os.replace(partial, target)
        return target
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise UsageError(f"could not download MNIST from {url} ({reason}); "
                         f"to work offline, {offline_hint}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def check_split(images, labels, name):
    """Refuse arrays that are not MNIST-shaped digits with labels 0-9."""
    if images.dtype != np.uint8:
        raise UsageError(f"{name} images are {images.dtype}, expected uint8 pixels 0-{MAX_PIXEL}")
    if images.ndim != 3 or images.shape[1:] != (TIMESTEPS, FEATURES):
        raise UsageError(f"{name} images have shape {images.shape}, "
                         f"expected (N, {TIMESTEPS}, {FEATURES})")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"{name} labels have shape {labels.shape} and dtype {labels.dtype}, "
                         "expected one integer per image")
    if len(images) != len(labels):
        raise UsageError(f"{name} has {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise UsageError(f"{name} holds no images")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise UsageError(f"{name} labels run from {labels.min()} to {labels.max()}, "
                         f"expected 0-{NUM_CLASSES - 1}")


def load_npz(path):
    """Read (x_train, y_train, x_test, y_test) from an npz in `keras.datasets.mnist` layout."""
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path} is not an npz file (it is not a zip archive); "
                         "give a mnist.npz or a folder of the IDX files")
    try:
        # allow_pickle=False: an npz holding object arrays is refused, never unpickled.
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in NPZ_KEYS if key not in npz.files]
            if missing:
                raise UsageError(f"{path} lacks the array(s) {', '.join(missing)}; "
                                 f"an MNIST npz holds {', '.join(NPZ_KEYS)}")
            arrays = [npz[key] for key in NPZ_KEYS]
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise UsageError(f"{path} holds object arrays, which would need unpickling; "
                             "refused: save the arrays as plain uint8 numbers") from None
        raise UsageError(f"{path} cannot be read as an npz ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path} cannot be read as an npz ({e})") from None
    check_split(arrays[0], arrays[1], f"{path} train split")
    check_split(arrays[2], arrays[3], f"{path} test split")
    return tuple(arrays)


def read_idx(path, magic):
    """Read one IDX file (optionally gzip-compressed) whose header must carry `magic`."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UsageError(f"{path} cannot be read ({e}); download it again") from None
    except Exception as e:  # zlib.error for a corrupt stream
        raise UsageError(f"{path} cannot be decompressed ({e}); download it again") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = f"0x{int.from_bytes(raw[:4], 'big'):08x}" if len(raw) >= 4 else "nothing"
        raise UsageError(f"{path} starts with {found}, not the IDX magic number 0x{magic:08x}; "
                         "is it the right file?")
    if len(raw) < header:
        raise UsageError(f"{path} is cut short inside its header; download it again")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise UsageError(f"{path} holds {len(raw)} bytes, but its header {dims} promises "
                         f"{expected}; download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_idx_file(folder, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise UsageError(f"{folder} has no {name} (or {name}.gz); the folder must hold the four "
                     "MNIST IDX files, or give --data a mnist.npz")


def load_idx_folder(folder):
    """Read (x_train, y_train, x_test, y_test) from the four original IDX files."""
    arrays = []
    for split, (images_name, labels_name) in IDX_FILES.items():
        images = read_idx(find_idx_file(folder, images_name), IDX_IMAGES_MAGIC)
        labels = read_idx(find_idx_file(folder, labels_name), IDX_LABELS_MAGIC)
        check_split(images, labels, f"{folder} {split} split")
        arrays += [images, labels]
    return tuple(arrays)


def load_mnist(data=None, url=MNIST_URL, sha256=MNIST_SHA256, cache_dir=None):
    """(x_train, y_train, x_test, y_test) as uint8 images and integer labels.

    `data` is a local mnist.npz or a folder of IDX files; without it, the Keras
    copy is downloaded (once, then served from the Keras cache).
    """
    if data is None:
        return load_npz(download(url, sha256, cache_dir or keras_cache_dir()))
    if os.path.isdir(data):
        return load_idx_folder(data)
    if not os.path.exists(data):
        raise UsageError(f"--data {data} does not exist; give the path of a mnist.npz or of a "
                         "folder holding the four IDX files")
    return load_npz(data)


def as_sequences(images):
    """uint8 images [N, rows, cols] -> float32 sequences [N, timesteps, features] in [0, 1].

    An image's rows are already in reading order, so row r becomes timestep r.
    """
    return images.astype(np.float32) / MAX_PIXEL


def shift_randomly(images, max_shift, seed):
    """Move each image by up to `max_shift` pixels up/down and left/right, at random.

    A digit written a little higher or further left is the same digit; showing the
    network such copies is what lifts a 128-unit LSTM past 99% on the test set.
    Works on a batch [N, rows, cols]: pad with zeros, then copy out each image's own
    window of the padded frame. `seed` (a sequence of integers) fixes the shifts, so a
    resumed run sees exactly the batches the interrupted one would have seen. NumPy
    does this in 0.3 ms for a batch of 128, a fifth of what a TensorFlow gather took.
    """
    n = len(images)
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, images.shape[1:], axis=(1, 2))
    down, right = np.random.default_rng(seed).integers(0, 2 * max_shift + 1, size=(2, n))
    return windows[np.arange(n), down, right]


def epoch_batches(x, y, batch_size, seed, epoch, max_shift=0, first_step=0):
    """Yield the batches of one epoch, from `first_step` on: shuffled, and shifted if asked.

    The order and the shifts depend only on (seed, epoch, step), not on what ran
    before, so a run resumed from a checkpoint mid-epoch continues with the very
    batches it would have had. A plain generator rather than tf.data: a dataset
    would copy the whole training set into its graph every epoch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(x))
    for step in range(first_step, -(-len(x) // batch_size)):
        index = order[step * batch_size:(step + 1) * batch_size]
        images = x[index]
        if max_shift:
            images = shift_randomly(images, max_shift, [seed, epoch, step])
        yield images, y[index]


def prefetched(batches, depth=4):
    """Yield from `batches`, produced by a background thread up to `depth` ahead.

    Cutting and shifting a batch takes about 0.3 ms; made while the previous batch
    trains, it costs nothing. The order is kept, so runs stay reproducible.
    """
    ready, stop, end = queue.Queue(depth), threading.Event(), object()

    def offer(item):  # False once the consumer has gone, so the thread never hangs
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in batches:
                if not offer(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            offer(error)
        offer(end)

    threading.Thread(target=produce, daemon=True).start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def chunked(batches, most, every, done=0):
    """Lists of up to `most` consecutive batches for one call of the training graph, cut
    also where the count of steps (`done` before the first) reaches a multiple of `every`,
    where a checkpoint is due. The cuts depend on the step count alone, so a resumed run
    makes the same ones."""
    chunk = []
    for batch in batches:
        chunk.append(batch)
        done += 1
        if len(chunk) == most or done % every == 0:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def split_validation(x, y, size):
    """Hold out the last `size` training examples for validation."""
    if size == 0:
        return (x, y), (x[:0], y[:0])
    return (x[:-size], y[:-size]), (x[-size:], y[-size:])


# ----------------------------------------------------------------------------
# Model

RECURRENT_CELLS = {"lstm": "LSTM", "gru": "GRU"}  # --cell -> its Keras layer class


def recurrent_layer_classes():
    return tuple(getattr(keras.layers, name) for name in RECURRENT_CELLS.values())


def make_model(input_shape, num_classes=NUM_CLASSES, cell="lstm", units=128, layers=1, unroll=True):
    """Stacked recurrent layers over the rows; the last step's output feeds a softmax.

    On a CPU the layers are unrolled over the 28 rows: the same cell and the same
    backpropagation through time, but one graph with no loop, which trains about 6%
    faster than TensorFlow's while loop (bench/README.md) and exports to TFLite as is.
    On a GPU (`unroll=False`), the layers meet Keras's conditions for the fused cuDNN
    kernel: no unrolling, the default activations, no recurrent dropout.
    """
    recurrent = getattr(keras.layers, RECURRENT_CELLS[cell])
    inputs = keras.Input(shape=input_shape, name="rows")
    x = inputs
    for i in range(layers):
        x = recurrent(units, return_sequences=i < layers - 1, unroll=unroll, name=f"{cell}_{i + 1}")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"rnn_mnist_{cell}")


def compile_model(model, learning_rate, total_steps, schedule="cosine"):
    """Adam on cross-entropy; the cosine schedule decays the rate to zero by the last step."""
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model


# ----------------------------------------------------------------------------
# Training and evaluation


def scores(probabilities, labels):
    """Cross-entropy and accuracy of predicted class probabilities."""
    picked = probabilities[np.arange(len(labels)), labels]
    return {"loss": float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0)))),
            "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels))}


def slice_bounds(n, slices):
    """(start, end) of `slices` slices of n rows, as equal as can be (n may be a tensor)."""
    edges = [n * k // slices for k in range(slices + 1)]
    return list(zip(edges, edges[1:]))


def rows_spec(model, name=None):
    """The signature of a batch of images for `model`'s traced functions: [N, rows, pixels]."""
    return tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=name)


def traced_once(model, key, build):
    """The function `build()` makes for `model`, made once per (model, key): tracing one
    of this model's graphs takes seconds."""
    made = TRACED.setdefault(model, {})
    if key not in made:
        made[key] = build()
    return made[key]


TRACED = weakref.WeakKeyDictionary()  # model -> {key: its traced function}


def predict(model, x, batch_size=1000, slices=2):
    """Class probabilities for `x`, a batch at a time; like training, each batch is cut
    into slices that run side by side, which keeps both cores busy (1.7 times as many
    images/s as Keras's `model.predict` on this CPU)."""
    def build():
        @tf.function(input_signature=[rows_spec(model)])
        def probabilities(images):
            return tf.concat([model(images[start:end], training=False)
                              for start, end in slice_bounds(tf.shape(images)[0], slices)], axis=0)
        return probabilities

    probabilities = traced_once(model, ("predict", slices), build)
    x = np.asarray(x, np.float32)
    if not len(x):
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate([probabilities(x[start:start + batch_size]).numpy()
                           for start in range(0, len(x), batch_size)])


def evaluate(model, x, y, batch_size=1000):
    return scores(predict(model, x, batch_size), y)


def training_state(model):
    """Everything a resumed run needs besides the data: the model, the optimizer, where
    training stands, and the best validation accuracy so far. Saved as one
    tf.train.Checkpoint, which writes atomically."""
    state = tf.Module()  # tracks what is assigned to it, for the checkpoint
    state.model = model
    state.optimizer = model.optimizer
    state.epoch = tf.Variable(0, dtype=tf.int64)  # epochs finished
    state.step_in_epoch = tf.Variable(0, dtype=tf.int64)  # batches done in the current one
    state.epoch_sums = tf.Variable(tf.zeros(3, tf.float64))  # loss, correct, images so far
    state.best_val_accuracy = tf.Variable(-1.0, dtype=tf.float64)
    state.best_epoch = tf.Variable(0, dtype=tf.int64)
    state.train_seconds = tf.Variable(0.0, dtype=tf.float64)
    state.history = tf.Variable("[]")  # JSON list of the finished epochs' records
    return state


def checkpoint_manager(state, folder):
    """Saves `state` into `folder` and finds its latest checkpoint there; keeps the last three."""
    return tf.train.CheckpointManager(tf.train.Checkpoint(state=state), folder, max_to_keep=3)


def history_of(state):
    return json.loads(state.history.numpy().decode())


class StopRequest:
    """Turns Ctrl-C and SIGTERM into a request the loop honours after the current call of
    the training graph, so the checkpoint it then writes is consistent. A second Ctrl-C
    stops at once."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self.handle)
                         for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        self.signal = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    """Training stopped on request after saving a checkpoint."""


class Diverged(Exception):
    """The loss stopped being a finite number."""


class SummaryBuffer:
    """TensorBoard summaries held until the next checkpoint, then written and flushed.

    So the event files never run ahead of the checkpoint: a run killed between two
    checkpoints and resumed writes each step once, with no duplicated or rewound
    points on TensorBoard's step axis. Writers: "train" and "validation" (overlaid
    by TensorBoard), and "" for the run itself (config, hparams, test results).
    """

    def __init__(self, run_dir):
        self.writers = {name: tf.summary.create_file_writer(os.path.join(run_dir, name))
                        for name in ("", "train", "validation")}
        self.pending = []

    def add(self, writer, tag, value, step, kind="scalar"):
        if kind == "scalar":
            value = float(value)
        self.pending.append((writer, kind, tag, value, int(step)))

    def flush(self):
        for writer, kind, tag, value, step in self.pending:
            with self.writers[writer].as_default():
                getattr(tf.summary, kind)(tag, value, step=step)  # scalar, histogram, image, text
        for writer in self.writers.values():
            writer.flush()
        self.pending = []

    def close(self):
        for writer in self.writers.values():
            writer.close()


def log_model_graph(summaries, model):
    """The forward pass's graph, for TensorBoard's Graphs dashboard."""
    forward = tf.function(lambda rows: model(rows, training=False))
    graph = forward.get_concrete_function(rows_spec(model, name="rows")).graph
    with summaries.writers[""].as_default():
        tf.summary.graph(graph)


def log_run_start(summaries, model, config):
    """Once per run: the graph, the resolved config as text, and the hyperparameters."""
    from tensorboard.plugins.hparams import api as hparams
    log_model_graph(summaries, model)
    rows = [[f"`{key}`", f"`{value}`"] for key, value in config.items()]
    with summaries.writers[""].as_default():
        tf.summary.text("config", markdown_table(["setting", "value"], rows), step=0)
        hparams.hparams({key: config[key] for key in HPARAMS}, trial_id=config["run_name"])
    summaries.writers[""].flush()


def log_test_results(run_dir, test, counts, step):
    """The test accuracy and loss (for the HParams table) and the per-class table, as text."""
    writer = tf.summary.create_file_writer(run_dir)
    with writer.as_default():
        tf.summary.scalar("test_accuracy", test["accuracy"], step=step)
        tf.summary.scalar("test_loss", test["loss"], step=step)
        tf.summary.text("test_per_class", per_class_table(counts), step=step)
    writer.close()


HPARAMS = ("cell", "units", "layers", "epochs", "batch_size", "learning_rate", "lr_schedule",
           "shift", "seed", "validation_size")


def log_weights_and_gradients(summaries, model, images, labels, epoch):
    """Histograms of every weight, and of the gradients on one fixed batch, with their norms."""
    with tf.GradientTape() as tape:
        loss = model.loss(labels, model(images, training=True))
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    for variable, gradient in zip(variables, gradients):
        name = variable.path
        summaries.add("train", f"weights/{name}", variable.numpy(), epoch, kind="histogram")
        summaries.add("train", f"gradients/{name}", gradient.numpy(), epoch, kind="histogram")
        summaries.add("train", f"gradient_norm/{name}", float(tf.norm(gradient)), epoch)


# ----------------------------------------------------------------------------
# Distribution: one process, all devices of a machine, or several machines

DISTRIBUTE_CHOICES = ("auto", "none", "mirrored", "multi-worker")
WORKER_TIMEOUT_SECONDS = 120  # a worker that hears nothing from the others this long gives up
TF_CONFIG_FIX = ('set it to {"cluster": {"worker": ["host:port", ...]}, '
                 '"task": {"type": "worker", "index": N}}, the same cluster on every worker')


class Worker(collections.namedtuple("Worker", "index count chief")):
    """This process's place among the workers of a run: one worker, its own chief, by default."""


ALONE = Worker(0, 1, True)


def worker_from_tf_config(text):
    """This worker's place in the cluster that TF_CONFIG (JSON) describes, checked before any work."""
    try:
        config = json.loads(text)
    except ValueError as e:
        raise UsageError(f"TF_CONFIG is not JSON ({e}); {TF_CONFIG_FIX}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
        raise UsageError(f"TF_CONFIG names no cluster of workers; {TF_CONFIG_FIX}")
    for role, members in cluster.items():
        if not isinstance(members, list) or not all(isinstance(m, str) and ":" in m for m in members):
            raise UsageError(f"TF_CONFIG's cluster lists {role} {members!r}, not \"host:port\" "
                             f"addresses; {TF_CONFIG_FIX}")
    task = config.get("task") if isinstance(config.get("task"), dict) else {}
    role, index = task.get("type"), task.get("index")
    if role not in ("worker", "chief") or role not in cluster:
        raise UsageError(f"TF_CONFIG's task type {role!r} is not a role of its cluster "
                         f"({', '.join(cluster)}); {TF_CONFIG_FIX}")
    members = cluster[role]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(members):
        raise UsageError(f"TF_CONFIG's task index {index!r} is out of range: its cluster has "
                         f"{len(members)} {role}(s), numbered 0 to {len(members) - 1}")
    order = cluster.get("chief", []) + cluster.get("worker", [])  # the chief counts first
    rank = index + (len(cluster.get("chief", [])) if role == "worker" else 0)
    return Worker(rank, len(order), rank == 0)


def placement(distribute, gpus, tf_config):
    """How this run is spread, decided from the flag and the machine, before TensorFlow starts:
    (strategy: none, mirrored or multi-worker; this worker; whether the CPU settings apply)."""
    worker = worker_from_tf_config(tf_config) if tf_config else None
    if distribute == "auto":  # mirrored on CPU cores: as fast as slices of a batch written by
        # hand, which it replaced (bench/README.md); a single GPU needs no strategy
        distribute = "multi-worker" if worker else "none" if gpus == 1 else "mirrored"
    if distribute == "multi-worker" and worker is None:
        raise UsageError(f"--distribute multi-worker needs the cluster in TF_CONFIG; {TF_CONFIG_FIX}")
    return distribute, (worker if distribute == "multi-worker" else ALONE), gpus == 0


def make_strategy(distribute, cpu_replicas):
    """The tf.distribute strategy for `placement`'s choice; made before TensorFlow runs an op."""
    if distribute == "none":
        return tf.distribute.get_strategy()  # the default: this process's one device
    if distribute == "multi-worker":  # configured by TF_CONFIG, as under any launcher
        # No timeout_seconds: TensorFlow 2.21 starts a thread per exchange to time it, which
        # piled up to ten thousand threads in a minute and crashed; Watchdog bounds the wait.
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()  # every GPU of this machine
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
    except RuntimeError:  # TensorFlow runs already (an earlier run in this Python process):
        pass              # its CPU devices are fixed, so the replicas are as many as there are
    devices = [device.name for device in tf.config.list_logical_devices("CPU")][:cpu_replicas]
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


class Watchdog:
    """Ends this worker with one line when training has not moved for `seconds`: a peer
    that hangs (rather than dies, which TensorFlow reports at once) must not leave the
    others waiting for ever. Training calls `alive()` after every step and checkpoint."""

    def __init__(self, seconds, message):
        self.seconds, self.message = seconds, message
        self.last, self.done = time.monotonic(), threading.Event()
        threading.Thread(target=self.watch, daemon=True).start()

    def alive(self):
        self.last = time.monotonic()

    def watch(self):
        while not self.done.wait(1.0):
            if time.monotonic() - self.last > self.seconds:
                print(self.message, file=sys.stderr, flush=True)
                os._exit(1)  # the main thread is blocked inside TensorFlow: nothing else ends it

    def stop(self):
        self.done.set()


def worker_lost_errors():
    """What TensorFlow raises on a worker whose peers died or stopped answering."""
    return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError)


def start_strategy(settings, distribute, on_cpu):
    """Set TensorFlow's threads (on a CPU; on a GPU its own) and determinism, then make the
    strategy: all of it before TensorFlow runs its first operation."""
    cpu_replicas = settings.cpu_replicas or os.cpu_count()
    if on_cpu:
        inter_op = settings.inter_op_threads
        if inter_op is None:  # one operation at once per replica: each core runs a replica's chain
            inter_op = cpu_replicas if distribute == "mirrored" else INTER_OP_THREADS
        configure_tensorflow(settings.intra_op_threads, inter_op)
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    return make_strategy(distribute, cpu_replicas)


def agree_with_chief(strategy, worker, text, size=256):
    """The chief's `text` (at most `size` bytes) on every worker: one all-reduce, to which
    the others add zeros. This is how all workers name one run folder unasked."""
    codes = np.zeros(size, np.int32)
    if worker.chief:
        raw = text.encode()[:size]
        codes[:len(raw)] = np.frombuffer(raw, np.uint8)
    summed = strategy.reduce(tf.distribute.ReduceOp.SUM,
                             strategy.run(lambda: tf.constant(codes)), axis=None)
    return bytes(summed.numpy().astype(np.uint8)).rstrip(b"\0").decode()


def weights_fingerprint(model):
    """A short digest of the model's weights: the same on every worker of a run."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:16]


def training_step(model, strategy=None, steps=1):
    """Optimizer steps as one graph on the distribution strategy (default: this process's
    one device): `run(batches, stop=False, rows=0)` trains on up to `steps` batches, a list
    of (images, labels), one after another, in one call -> (each step's mean loss, each
    step's correct answers, stop requests), each summed over all replicas. `stop` says
    whether this process was asked to stop; `rows`, the size to pad a smaller batch to.

    The batch is split between the strategy's replicas (CPU cores, GPUs or workers). On a
    CPU this is what keeps every core busy: an LSTM is a chain of 28 small steps, each
    waiting for the one before, so one batch keeps one core busy; a replica per core
    runs a chain per core. The loss is the mean over the whole batch, so the gradient is
    the whole batch's, however it is split (tested).

    Several steps in one call are Keras's `steps_per_execution`: the Python work of a call
    (1.5 ms of a 11.5 ms step on two cores, while they wait) is paid once for them all,
    and the steps follow one another without a gap: 1.2 times the training samples/s with
    16 steps a call (bench/README.md). The steps are the same, one at a time or many
    (tested).
    """
    strategy = strategy or tf.distribute.get_strategy()
    return traced_once(model, ("train", id(strategy), steps),
                       lambda: build_training_step(model, strategy, steps))


def build_training_step(model, strategy, slots):
    optimizer, variables = model.optimizer, model.trainable_variables
    total = tf.distribute.ReduceOp.SUM

    def replica_step(images, labels, counted, batch_size, step):
        images, labels, counted = images[step], labels[step], counted[step]  # this step's batch
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            loss_sum = tf.reduce_sum(counted * keras.losses.sparse_categorical_crossentropy(
                labels, probabilities))
        scale = 1.0 / batch_size  # the whole batch's mean, once the replicas' sums are added
        gradients = [g * scale for g in tape.gradient(loss_sum, variables)]
        optimizer.apply_gradients(zip(gradients, variables))  # adds up the replicas' gradients
        predicted = tf.argmax(probabilities, axis=1, output_type=labels.dtype)
        correct = tf.reduce_sum(tf.cast(predicted == labels, tf.int32) * tf.cast(counted, tf.int32))
        return loss_sum * scale, correct

    def all_replicas_steps(images, labels, counted, batch_sizes, count, stop):
        # the stop requests added up first: passed into the loop below instead, TensorFlow
        # 2.21 returned empty tensors for all the outputs
        stops = strategy.reduce(total, strategy.run(tf.identity, args=(stop,)), axis=None)

        def one_step(step, losses, corrects):
            results = strategy.run(replica_step, args=(images, labels, counted, batch_sizes[step], step))
            loss, correct = (strategy.reduce(total, result, axis=None) for result in results)
            return step + 1, losses.write(step, loss), corrects.write(step, correct)

        # a loop in the graph, as Keras's fit makes for steps_per_execution; written out, not
        # made by AutoGraph, whose conversion of the step added 0.3 s to the first call
        _, losses, corrects = tf.while_loop(lambda step, *_: step < count, one_step, (
            tf.constant(0), tf.TensorArray(tf.float32, count), tf.TensorArray(tf.int32, count)))
        return losses.stack(), corrects.stack(), stops

    if strategy.num_replicas_in_sync == 1:  # plain tensors: a signature saves a retrace and time
        graph = tf.function(all_replicas_steps, autograph=False, input_signature=[
            tf.TensorSpec((slots, *rows_spec(model).shape), tf.float32), tf.TensorSpec((slots, None), tf.int32),
            tf.TensorSpec((slots, None), tf.float32), tf.TensorSpec((slots,), tf.float32),
            tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32)])
    else:  # each replica's part: a tensor per replica, which a signature cannot name. (Cut
        # from the whole batch inside the graph instead, the first step took 0.7 s longer.)
        graph = tf.function(all_replicas_steps, autograph=False, reduce_retracing=True)

    def run(batches, stop=False, rows=0):
        if not 1 <= len(batches) <= slots:
            raise ValueError(f"{len(batches)} batches for a graph of 1 to {slots} steps")
        replicas = strategy.num_replicas_in_sync
        # Every batch padded with blank images that count for nothing, to `rows` (an epoch's
        # last, smaller batch: the same shapes as the others, so the graph is not traced
        # again, which took a second) and to a row per replica at least (Keras's LSTM takes
        # no empty batch); and as many batches as the graph has slots, blank ones unused.
        sizes = [len(labels) for _, labels in batches]
        width = max(*sizes, rows, replicas)
        images = np.zeros((slots, width, *np.shape(batches[0][0])[1:]), np.float32)
        labels = np.zeros((slots, width), np.int32)
        for slot, (batch_images, batch_labels) in enumerate(batches):
            images[slot, :sizes[slot]], labels[slot, :sizes[slot]] = batch_images, batch_labels
        counted = (np.arange(width) < np.array(sizes + [0] * (slots - len(batches)))[:, None])
        parts = slice_bounds(width, replicas)

        def split(array):  # each replica its part of every batch
            if replicas == 1:
                return tf.convert_to_tensor(array)
            return strategy.experimental_distribute_values_from_function(
                lambda context: tf.convert_to_tensor(array[:, slice(*parts[context.replica_id_in_sync_group])]))
        losses, corrects, stops = graph(
            split(images), split(labels), split(counted.astype(np.float32)),
            tf.constant(sizes + [1] * (slots - len(batches)), tf.float32),
            tf.constant(len(batches)), tf.constant(int(stop)))
        return losses.numpy(), corrects.numpy(), int(stops)

    return run


def learning_rate_now(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def save_model_atomically(model, path):
    partial = path[:-len(".keras")] + ".partial.keras"  # Keras insists on the extension
    model.save(partial)
    os.replace(partial, path)


class Checkpoints:
    """Saves the training state, and writes the summaries held since the last save.

    Under a multi-worker strategy every worker must take part in each save; only the
    chief saves into the run folder, the others into a temporary folder that is
    removed when training ends.
    """

    def __init__(self, state, run_dir, summaries, worker=ALONE):
        self.state, self.summaries, self.chief = state, summaries, worker.chief
        self.folder = os.path.join(run_dir, "checkpoints")
        if not worker.chief:  # named for the run and worker, so a killed worker's is found again
            self.folder = os.path.join(tempfile.gettempdir(), f"rnn_mnist-{os.path.basename(run_dir)}"
                                                              f"-worker{worker.index}-checkpoints")
            self.close()
        self.manager = checkpoint_manager(state, self.folder)

    def save(self, global_step, step_in_epoch, sums):
        self.state.step_in_epoch.assign(step_in_epoch)
        self.state.epoch_sums.assign(sums)
        self.manager.save(checkpoint_number=global_step)
        if self.summaries is not None:
            self.summaries.flush()

    def close(self):
        if not self.chief:
            shutil.rmtree(self.folder, ignore_errors=True)


def train(state, train_data, val_data, settings, run_dir, summaries, quiet=False,
          strategy=None, worker=ALONE):
    """Train from wherever `state` stands to `settings.epochs`, checkpointing as it goes;
    return the finished epochs' records. `summaries` is None where nothing is logged
    (a worker that is not the chief)."""
    return Training(state, train_data, val_data, settings, run_dir, summaries, quiet,
                    strategy, worker).run()


class Training:
    """The loop over epochs and steps of one run.

    Written as a loop over single steps rather than `model.fit`, because fit
    cannot start in the middle of an epoch, checkpoint every N steps, or stop
    cleanly on a signal between two batches.
    """

    def __init__(self, state, train_data, val_data, settings, run_dir, summaries, quiet,
                 strategy, worker):
        self.state, self.settings, self.summaries = state, settings, summaries
        self.chief = worker.chief
        (self.x, self.y), (self.x_val, self.y_val) = train_data, val_data
        self.model = state.model
        self.train_step = training_step(self.model, strategy, settings.steps_per_execution)
        self.steps_per_epoch = -(-len(self.x) // settings.batch_size)
        self.model_path = os.path.join(run_dir, MODEL_FILE)
        self.global_step = int(state.optimizer.iterations.numpy())
        self.quiet = quiet or not worker.chief
        self.alone = worker.count == 1
        self.checkpoints = Checkpoints(state, run_dir, summaries, worker)
        self.watchdog = Watchdog(WORKER_TIMEOUT_SECONDS, (
            f"rnn_mnist.py: error: worker {worker.index} of {worker.count} heard nothing from the "
            f"others for {WORKER_TIMEOUT_SECONDS} s; start every worker again with --resume to go "
            f"on from the last checkpoint in {run_dir}")) if worker.count > 1 else None

    def run(self):
        state, settings = self.state, self.settings
        bar = tqdm(total=settings.epochs, initial=int(state.epoch.numpy()), desc="training",
                   unit="epoch", dynamic_ncols=True, disable=self.quiet)
        try:
            with StopRequest() as stop:
                for epoch in range(int(state.epoch.numpy()), settings.epochs):
                    record = self.epoch(epoch, stop)
                    monitored = self.end_epoch(epoch + 1, record)
                    if not self.quiet:
                        bar.write(epoch_line(epoch + 1, settings.epochs, record))
                    bar.set_postfix(val_acc=f"{monitored:.2%}", refresh=False)
                    bar.update(1)
        except BaseException:  # no half-drawn bar stays above the message on why training stopped
            bar.leave = False
            raise
        finally:
            bar.close()
            self.checkpoints.close()
            if self.watchdog is not None:
                self.watchdog.stop()
        return history_of(state)

    def epoch(self, epoch, stop):
        """The steps of one epoch, from where the state stands; the epoch's training record."""
        state, settings = self.state, self.settings
        first_step = int(state.step_in_epoch.numpy())
        sums = state.epoch_sums.numpy()  # loss, correct, images so far in this epoch
        bar = tqdm(total=self.steps_per_epoch, initial=first_step, desc=f"epoch {epoch + 1}",
                   unit="batch", leave=False, dynamic_ncols=True, disable=self.quiet)
        started = mark = time.perf_counter()
        seen_here = 0
        chunks = prefetched(chunked(epoch_batches(self.x, self.y, settings.batch_size, settings.seed,
                                                  epoch, settings.shift, first_step),
                                    settings.steps_per_execution, settings.checkpoint_every,
                                    self.global_step))
        try:
            step = first_step
            for chunk in chunks:
                losses, corrects, stops = self.train_step(chunk, stop.signal is not None,
                                                          settings.batch_size)
                for loss, correct, (_, labels) in zip(losses, corrects, chunk):
                    if not np.isfinite(loss):
                        raise Diverged(f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}")
                    n = len(labels)
                    sums = sums + [loss * n, correct, n]
                    seen_here += n
                    step += 1
                    self.global_step += 1
                    self.log_batch(loss, correct / n)
                bar.set_postfix(ordered_dict={"loss": f"{sums[0] / sums[2]:.4f}",
                                              "acc": f"{sums[1] / sums[2]:.2%}"}, refresh=False)
                bar.update(len(chunk))
                self.heard_from_all()
                # Asked here, or on another worker: every worker stops after the same step.
                # A request during a call is seen by the next (the signal waits for Python);
                # alone, a worker need not wait for that one to agree.
                stops = stops or (self.alone and stop.signal is not None)
                if stops or self.global_step % settings.checkpoint_every == 0:
                    mark = self.add_training_time(mark)
                    self.checkpoints.save(self.global_step, step, sums)
                if stops:
                    raise Interrupted(stop.signal)  # None: the request came to another worker
        finally:
            bar.close()
        mark = self.add_training_time(mark)
        return {"loss": sums[0] / sums[2], "accuracy": sums[1] / sums[2],
                "learning_rate": learning_rate_now(self.model),
                "samples_per_second": seen_here / (mark - started)}

    def add_training_time(self, since):
        now = time.perf_counter()
        self.state.train_seconds.assign_add(now - since)
        return now

    def log_batch(self, loss, accuracy):
        if self.summaries is not None and self.global_step % self.settings.log_every == 0:
            self.summaries.add("train", "batch_loss", loss, self.global_step)
            self.summaries.add("train", "batch_accuracy", accuracy, self.global_step)

    def end_epoch(self, epoch, record):
        """Validate, keep the best model, log the epoch and checkpoint; the accuracy that
        picks the best epoch."""
        state, probabilities = self.state, None
        if len(self.x_val):
            probabilities = predict(self.model, self.x_val)
            record.update({f"val_{k}": v for k, v in scores(probabilities, self.y_val).items()})
        monitored = record.get("val_accuracy", record["accuracy"])
        if monitored > state.best_val_accuracy.numpy():
            state.best_val_accuracy.assign(monitored)
            state.best_epoch.assign(epoch)
            if self.chief:
                save_model_atomically(self.model, self.model_path)
        if self.summaries is not None:
            self.log_epoch(epoch, record, probabilities)
        state.history.assign(json.dumps(history_of(state) + [record]))
        state.epoch.assign(epoch)
        self.checkpoints.save(self.global_step, 0, [0.0, 0.0, 0.0])
        self.heard_from_all()
        return monitored

    def heard_from_all(self):  # a step or a checkpoint done: every worker took part
        if self.watchdog is not None:
            self.watchdog.alive()

    def log_epoch(self, epoch, record, probabilities):
        summaries, settings = self.summaries, self.settings
        if probabilities is not None and settings.figures_every and epoch % settings.figures_every == 0:
            for tag, image in epoch_pictures(self.model, self.x_val, self.y_val, probabilities,
                                             epoch).items():
                summaries.add("validation", tag, image, epoch, kind="image")
        log_weights_and_gradients(summaries, self.model, self.x[:settings.batch_size],
                                  self.y[:settings.batch_size], epoch)
        for key in ("loss", "accuracy", "learning_rate", "samples_per_second"):
            summaries.add("train", f"epoch_{key}", record[key], epoch)
        for key in ("loss", "accuracy"):
            if f"val_{key}" in record:
                summaries.add("validation", f"epoch_{key}", record[f"val_{key}"], epoch)


def epoch_line(epoch, epochs, record):
    """One fixed-format line per finished epoch."""
    line = (f"epoch {epoch:>{len(str(epochs))}}/{epochs}"
            f"  loss {record['loss']:.4f}  acc {record['accuracy']:7.2%}")
    if "val_accuracy" in record:
        line += f"  | val loss {record['val_loss']:.4f}  val acc {record['val_accuracy']:7.2%}"
    return line + (f"  | lr {record['learning_rate']:.2e}"
                   f"  {record['samples_per_second']:,.0f} samples/s")


# ----------------------------------------------------------------------------
# Pictures for TensorBoard: how the network reads a digit

SHOWN_DIGITS = 8  # digits in the readout and gate pictures
SHOWN_MISTAKES = 24  # misclassified digits shown, at most


def figure_to_image(figure):
    """A matplotlib figure -> uint8 RGBA pixels [1, H, W, 4] for tf.summary.image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[None].copy()


def new_figure(width, height):
    from matplotlib.figure import Figure  # the object API: no pyplot, no global state
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def draw_confusion(counts, title):
    """The 10x10 confusion matrix with its counts written in, on a log colour scale."""
    from matplotlib.colors import LogNorm
    figure = new_figure(6.4, 5.6)
    ax = figure.add_subplot()
    ax.imshow(counts + 1, cmap="Blues", norm=LogNorm(vmin=1, vmax=counts.max() + 1))
    for (true, guess), n in np.ndenumerate(counts):
        if n:
            dark = (n + 1) > (counts.max() + 1) ** 0.6
            ax.text(guess, true, str(n), ha="center", va="center", fontsize=8,
                    color="white" if dark else ("black" if true == guess else "firebrick"))
    ax.set_xticks(range(len(counts)))
    ax.set_yticks(range(len(counts)))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    return figure_to_image(figure)


def draw_mistakes(images, labels, predicted, confidence, title, columns=8):
    """A grid of misclassified digits, each captioned 'true -> predicted (confidence)'.

    One mosaic in one axes: a subplot per digit would cost a second per epoch.
    """
    rows = max(1, -(-len(images) // columns))
    size, gap = images.shape[1], 10
    mosaic = np.ones((rows * (size + gap), columns * (size + 2)), np.float32) * 0.15
    figure = new_figure(columns * 1.05, rows * 1.25 + 0.5)
    ax = figure.add_subplot()
    for i, image in enumerate(images):
        top, left = (i // columns) * (size + gap) + gap, (i % columns) * (size + 2) + 1
        mosaic[top:top + size, left:left + size] = image
        ax.text(left + size / 2, top - 1.5, f"{labels[i]} \u2192 {predicted[i]} ({confidence[i]:.0%})",
                ha="center", va="bottom", fontsize=7.5, color="#ffb4a8")
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return figure_to_image(figure)


def rebuilt(model, change):
    """A copy of `model` with the same weights, after `change(configs)` has edited the
    configs of its recurrent layers, first to last."""
    config = model.get_config()
    change([layer["config"] for layer in config["layers"]
            if layer["class_name"] in RECURRENT_CELLS.values()])
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def readout_model(model):
    """The same network, but its head reads the state after every row, not only the last."""
    return rebuilt(model, lambda recurrent: recurrent[-1].update(return_sequences=True))


def unit_trace(model, x):
    """Per unit and row, the gates and state of the last recurrent layer: {name: [N, T, units]},
    and that layer's output after the last step, [N, units].

    Keras does not expose the gates, so the cell is run again here in NumPy from the
    layer's weights, following Keras's LSTM (gates i, f, c, o) and GRU (z, r, h;
    reset after the recurrent product) equations. The state is shown squashed into
    [-1, 1] as the cell itself squashes it: tanh(c) for an LSTM, h for a GRU.
    """
    recurrent = [layer for layer in model.layers if isinstance(layer, recurrent_layer_classes())]
    layer = recurrent[-1]
    if len(recurrent) > 1:  # the last layer reads the rows as the layer below it gives them
        x = np.asarray(keras.Model(model.inputs[0], recurrent[-2].output)(x))
    kernel, recurrent_kernel, bias = (np.asarray(w) for w in layer.get_weights())
    units = recurrent_kernel.shape[0]
    h = np.zeros((len(x), units), np.float32)
    c = np.zeros_like(h)
    trace = {}

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    def record(**values):
        for name, value in values.items():
            trace.setdefault(name.replace("_", " "), []).append(value)

    for t in range(x.shape[1]):
        if isinstance(layer, keras.layers.LSTM):
            z = x[:, t] @ kernel + h @ recurrent_kernel + bias
            i, f, g, o = np.split(z, 4, axis=1)
            i, f, o = sigmoid(i), sigmoid(f), sigmoid(o)
            c = f * c + i * np.tanh(g)
            h = o * np.tanh(c)
            record(input_gate=i, forget_gate=f, output_gate=o, cell_state=np.tanh(c))
        else:
            input_bias, recurrent_bias = bias if bias.ndim == 2 else (bias, np.zeros_like(bias))
            xz, xr, xh = np.split(x[:, t] @ kernel + input_bias, 3, axis=1)
            hz, hr, hh = np.split(h @ recurrent_kernel + recurrent_bias, 3, axis=1)
            update, reset = sigmoid(xz + hz), sigmoid(xr + hr)
            h = update * h + (1 - update) * np.tanh(xh + reset * hh)
            record(update_gate=update, reset_gate=reset, hidden_state=h)
    return {name: np.stack(values, axis=1) for name, values in trace.items()}, h


UNITS_PER_DIGIT = 4  # units shown for each digit in the pictures of the state


def voting_units(model, per_digit=UNITS_PER_DIGIT):
    """The units shown in the pictures of the state, and the digit each is shown for.

    For each digit, the `per_digit` units of the last recurrent layer with the largest
    weight into that digit's softmax input: the units its answer is read from, so a
    drawn 3 lights up the 3's units and a 7 the 7's. An average over all units (what
    this picture showed first) looks nearly alike for every digit. The choice follows
    from the weights alone, so the page needs no data to make it.
    """
    kernel = np.asarray(model.layers[-1].get_weights()[0])  # [units, classes]
    top = np.argsort(-kernel, axis=0)[:min(per_digit, len(kernel))]  # [per_digit, classes]
    return top.T.reshape(-1), np.repeat(np.arange(kernel.shape[1]), len(top))


def how_it_reads(model, x):
    """What the pictures and the page show of digits x [N, rows, pixels] in [0, 1]:
    "readout", the class probabilities after each row [N, T, classes]; "state", the shown
    units' gates and state after each row, {name: [N, T, K]}; "units" and "unit_digits",
    which units those are and the digit each votes for."""
    readout = traced_once(model, "readout", lambda: traced_readout(model))
    trace, _ = unit_trace(model, x)
    units, digits = voting_units(model)
    return {"readout": readout(np.asarray(x, np.float32)).numpy(),
            "state": {name: values[..., units] for name, values in trace.items()},
            "units": units, "unit_digits": digits}


def traced_readout(model):
    copy = readout_model(model)
    return tf.function(lambda rows: copy(rows, training=False), input_signature=[rows_spec(model)])


def draw_rows(images, captions, panels, title, per_line=2):
    """Per digit: the image beside heat maps whose rows line up with the image's rows.

    `panels` is a list of (name, values [N, T, K], column labels, colour map, range).
    Each digit and its heat maps are one picture composed here in NumPy, in one axes,
    with one colour bar per panel for the whole figure: a subplot per heat map would
    cost a second or two per epoch.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    rows = images.shape[1]
    # heat-map columns are widened so a panel spans about a digit's width (at most 10 px each)
    cells = [min(10, -(-images.shape[2] // values.shape[2])) for _, values, *_ in panels]
    ticks, names = [], []
    left = images.shape[2] + 2
    for (name, values, labels, cmap, limits), cell in zip(panels, cells):
        ticks += [(left + cell * k + (cell - 1) / 2, str(label)) for k, label in enumerate(labels)]
        names.append((left + values.shape[2] * cell / 2, name))
        left += values.shape[2] * cell + 2
    n = len(images)
    lines = -(-n // per_line)
    figure = new_figure(per_line * left / 22 + 0.4, lines * 1.75 + 1.1)
    figure.suptitle(title)
    axes = np.atleast_1d(figure.subplots(lines, per_line)).reshape(-1)
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        strip = [np.repeat(images[i][..., None], 3, axis=2), np.ones((rows, 2, 3))]
        for (name, values, labels, cmap, (low, high)), cell in zip(panels, cells):
            coloured = colormaps[cmap](np.clip((values[i] - low) / (high - low), 0, 1))[..., :3]
            strip += [np.repeat(coloured, cell, axis=1), np.ones((rows, 2, 3))]
        ax.imshow(np.concatenate(strip[:-1], axis=1), interpolation="nearest")
        named = len(panels) > 1 and i < per_line  # which panel is which, over the first line
        ax.set_title(captions[i], fontsize=9, pad=14 if named else 6)
        for x, label in ticks:
            ax.text(x, rows + 0.6, label, ha="center", va="top", fontsize=6)
        ax.text(-1, 0, "row 0", ha="right", va="center", fontsize=6)
        ax.text(-1, rows - 1, f"row {rows - 1}", ha="right", va="center", fontsize=6)
        if named:
            for x, name in names:
                ax.text(x, -1.2, name, ha="center", va="bottom", fontsize=7)
    scales = {}  # one colour bar for the panels that share a colour scale
    for name, values, labels, cmap, limits in panels:
        scales.setdefault((cmap, limits), []).append(name)
    for (cmap, (low, high)), named in scales.items():
        bar = figure.colorbar(ScalarMappable(Normalize(low, high), cmap), ax=axes.tolist(),
                              location="bottom", fraction=0.04, aspect=40, pad=0.02)
        bar.set_label(", ".join(named), fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return figure_to_image(figure)


def epoch_pictures(model, x_val, y_val, probabilities, epoch):
    """The pictures TensorBoard shows for one epoch, from the validation set: {tag: image}."""
    predicted = probabilities.argmax(axis=1)
    pictures = {"confusion_matrix": draw_confusion(
        confusion_matrix(y_val.astype(np.int64), predicted),
        f"validation, epoch {epoch}: {np.mean(predicted == y_val):.2%} right")}
    wrong = np.nonzero(predicted != y_val)[0][:SHOWN_MISTAKES]
    if len(wrong):
        pictures["misclassified"] = draw_mistakes(
            x_val[wrong], y_val[wrong], predicted[wrong], probabilities[wrong].max(axis=1),
            f"misclassified, epoch {epoch}: true \u2192 predicted (confidence), "
            f"{len(wrong)} of {int(np.sum(predicted != y_val))}")
    # one example of each digit where there is one, then the first mistakes
    shown = [int(np.argmax(y_val == d)) for d in range(NUM_CLASSES) if (y_val == d).any()]
    shown = (shown[:SHOWN_DIGITS - 2] + list(wrong[:2]))[:SHOWN_DIGITS]
    images, labels = x_val[shown], y_val[shown]
    captions = [f"a {label}, read as {guess} ({p:.0%})" for label, guess, p in
                zip(labels, predicted[shown], probabilities[shown].max(axis=1))]
    read = how_it_reads(model, images)
    pictures["readout_over_rows"] = draw_rows(
        images, captions,
        [("P(digit) after each row", read["readout"], list(range(NUM_CLASSES)), "viridis", (0, 1))],
        f"epoch {epoch}: the prediction forming as the rows are read, top to bottom")
    first_of_group = np.r_[True, read["unit_digits"][1:] != read["unit_digits"][:-1]]
    labels = [str(d) if first else "" for d, first in zip(read["unit_digits"], first_of_group)]
    pictures["gates_over_rows"] = draw_rows(
        images, captions,
        [(name, values, labels, "magma" if "gate" in name else "RdBu_r",
          (0, 1) if "gate" in name else (-1, 1)) for name, values in read["state"].items()],
        f"epoch {epoch}: units of the last {type(model.layers[-2]).__name__} layer, row by row, "
        f"{UNITS_PER_DIGIT} for each digit (those that vote most for it)", per_line=1)
    return pictures


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def per_class(counts):
    """Per digit: (digit, images, correct, recall, precision) from a confusion matrix."""
    for digit in range(len(counts)):
        right, total, called = counts[digit, digit], counts[digit].sum(), counts[:, digit].sum()
        yield digit, total, right, right / max(total, 1), right / max(called, 1)


def per_class_table(counts):
    rows = [[digit, f"{total:,}", f"{precision:.2%}", f"{recall:.2%}"]
            for digit, total, _, recall, precision in per_class(counts)]
    return markdown_table(["digit", "images", "precision", "recall"], rows)


# ----------------------------------------------------------------------------
# Using a trained model: evaluate, predict, export

DIGIT_BOX = 20  # MNIST scaled each digit to fit 20x20 pixels, then centred it in 28x28


def newest_run_with(logdir, filename):
    """The name of the run in `logdir` whose `filename` was written last, or None."""
    found = []
    for name in os.listdir(logdir) if os.path.isdir(logdir) else []:
        path = os.path.join(logdir, name, filename)
        if os.path.isfile(path):
            found.append((os.path.getmtime(path), name))
    return max(found)[1] if found else None


def load_trained_model(path, logdir=DEFAULT_LOGDIR):
    """Load a model this tool trained (Keras safe mode: no arbitrary code), or explain why not."""
    if path is None:
        run = newest_run_with(logdir, MODEL_FILE)
        if run is None:
            raise UsageError(f"no trained model in {logdir}; train one first, or give --model PATH")
        path = os.path.join(logdir, run, MODEL_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"--model {path} does not exist; give the model.keras of a run")
    try:
        model = keras.models.load_model(path, safe_mode=True)
    except Exception as e:  # Keras raises many kinds for a file that is not a model
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path} is not a Keras model this tool can load ({reason}); "
                         "give the model.keras of a run") from None
    expected_in, expected_out = (None, TIMESTEPS, FEATURES), (None, NUM_CLASSES)
    if tuple(model.input_shape) != expected_in or tuple(model.output_shape) != expected_out:
        raise UsageError(f"{path} maps {model.input_shape} to {model.output_shape}, not MNIST "
                         f"rows {expected_in} to {NUM_CLASSES} classes; give a model this tool trained")
    return model, path


def tested_accuracy(run_dir):
    """The test accuracy in a run folder's metrics.json, or None (unfinished, or no run)."""
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            return float(json.load(f)["test_accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def model_line(path, picked):
    """Which model a command uses, with its run and test accuracy, said before it answers."""
    run_dir = os.path.dirname(path)
    accuracy = tested_accuracy(run_dir)
    if accuracy is not None:
        tested = f"test accuracy {accuracy:.2%}"
    else:
        tested = "not tested: its run has not finished" if os.path.isfile(
            os.path.join(run_dir, "config.json")) else "not trained in a run folder of this tool"
    which = "the newest model in --logdir" if picked else "model"
    return f"using {which}: {path} (run {os.path.basename(run_dir) or '.'}, {tested})"


def confusion_matrix(labels, predicted, num_classes=NUM_CLASSES):
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def format_confusion(counts):
    width = max(5, len(str(counts.max())) + 1)
    head = "true\\pred" + "".join(f"{c:>{width}}" for c in range(len(counts)))
    rows = [f"{t:>9}" + "".join(f"{n:>{width}}" for n in row) for t, row in enumerate(counts)]
    return "\n".join([head] + rows)


def format_per_class(counts):
    lines = ["digit  images  correct  accuracy  precision"]
    for digit, total, right, recall, precision in per_class(counts):
        lines.append(f"{digit:>5}  {total:>6,}  {right:>7,}  {recall:>8.2%}  {precision:>9.2%}")
    return "\n".join(lines)


def to_mnist_form(pixels):
    """Any picture of one digit -> a 28x28 uint8 image drawn the way MNIST's are.

    As MNIST itself was made: grayscale; light digit on dark ground (a dark digit
    on light paper is inverted); cropped to the ink; scaled, keeping the aspect
    ratio, so the longer side is 20 pixels; placed so its centre of mass is the
    centre of the 28x28 frame.
    """
    image = pixels.astype(np.float32)
    if image.shape[-1] in (2, 4):  # transparency: lay the picture on white paper
        alpha = image[..., -1:] / MAX_PIXEL
        image = image[..., :-1] * alpha + MAX_PIXEL * (1 - alpha)
    gray = image @ np.array([0.299, 0.587, 0.114], np.float32) if image.shape[-1] == 3 else image[..., 0]
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > MAX_PIXEL / 2:
        gray, border = MAX_PIXEL - gray, MAX_PIXEL - border
    gray = np.clip(gray - np.median(border), 0, None)  # the paper becomes 0
    if gray.max() <= 0:
        return None
    gray *= MAX_PIXEL / gray.max()
    ink_rows = np.nonzero((gray > MAX_PIXEL / 4).any(axis=1))[0]
    ink_cols = np.nonzero((gray > MAX_PIXEL / 4).any(axis=0))[0]
    digit = gray[ink_rows[0]:ink_rows[-1] + 1, ink_cols[0]:ink_cols[-1] + 1]
    scale = DIGIT_BOX / max(digit.shape)
    size = [max(1, round(side * scale)) for side in digit.shape]
    digit = tf.image.resize(digit[..., None], size, antialias=True).numpy()[..., 0]
    digit = np.clip(digit, 0, MAX_PIXEL)
    frame = np.zeros((TIMESTEPS, FEATURES), np.float32)
    rows, cols = np.indices(digit.shape)
    mass = digit.sum()
    centre = ((rows * digit).sum() / mass, (cols * digit).sum() / mass)
    top = int(np.clip(round((TIMESTEPS - 1) / 2 - centre[0]), 0, TIMESTEPS - digit.shape[0]))
    left = int(np.clip(round((FEATURES - 1) / 2 - centre[1]), 0, FEATURES - digit.shape[1]))
    frame[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return np.round(frame).astype(np.uint8)


MAX_PICTURE_SIDE = 4096  # pixels: a phone's photo fits; a decompression bomb does not


def read_picture(path):
    """Decode a PNG, JPEG, BMP or GIF file (its first frame) into [H, W, C] uint8 pixels."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); give a PNG, JPEG, BMP or GIF file") from None
    return decode_picture(data, path)


def decode_picture(data, name):
    """Decode the bytes of a PNG, JPEG, BMP or GIF picture into [H, W, C] uint8 pixels;
    `name` says what the bytes are in a message, e.g. the file's path."""
    def refuse_larger(height, width):
        if max(height, width) > MAX_PICTURE_SIDE:
            raise UsageError(f"{name} is {width}x{height} pixels, larger than the {MAX_PICTURE_SIDE}x"
                             f"{MAX_PICTURE_SIDE} this tool reads; give a smaller picture")
    try:
        refuse_larger(*declared_size(data))
        pixels = tf.io.decode_image(data, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, ValueError):
        raise UsageError(f"{name} is not a PNG, JPEG, BMP or GIF image; give a picture of a digit") from None
    refuse_larger(*pixels.shape[:2])
    return pixels


def declared_size(data):
    """(height, width) that a PNG or JPEG header declares, (0, 0) for other pictures.

    Read before decoding, because a PNG of a few kilobytes can unpack into gigabytes;
    a PNG header counts only if its checksum holds, so noise is not taken for a size.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 33 and data[12:16] == b"IHDR" \
            and zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big"):
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data[:2] == b"\xff\xd8":
        height, width, _ = tf.image.extract_jpeg_shape(data).numpy()
        return int(height), int(width)
    return 0, 0


def write_png(path, image):
    tf.io.write_file(path, tf.io.encode_png(image[..., None]))


def serving_function(model):
    """uint8 images [N, 28, 28], 0-255, MNIST polarity -> {"probabilities": [N, 10]}."""
    @tf.function(input_signature=[tf.TensorSpec([None, TIMESTEPS, FEATURES], tf.uint8, name="images")])
    def serve(images):
        return {"probabilities": model(tf.cast(images, tf.float32) / MAX_PIXEL, training=False)}
    return serve


def write_saved_model(model, out_dir):
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_function(model))
    archive.write_out(out_dir, verbose=False)


def export_model(model, out_dir, tflite=False):
    """Write a SavedModel (signature `serving_default`) and, if asked, a .tflite file."""
    write_saved_model(model, out_dir)
    written = [out_dir]
    if tflite:
        # TFLite's built-in ops have no while loop over tensor lists: convert a copy whose
        # recurrent layers are unrolled over the rows (same weights, same outputs). This
        # tool's models are unrolled already; a model saved with a loop is not.
        unrolled = rebuilt(model, lambda recurrent: [c.update(unroll=True) for c in recurrent])
        with tempfile.TemporaryDirectory() as scratch:
            write_saved_model(unrolled, scratch)
            flat = tf.lite.TFLiteConverter.from_saved_model(scratch).convert()
        path = os.path.join(out_dir, "model.tflite")
        with open(path, "wb") as f:
            f.write(flat)
        written.append(path)
    return written


# ----------------------------------------------------------------------------
# The page: draw a digit and watch the network read it, row by row
#
# Served with the standard library's ThreadingHTTPServer: the page is three static
# files and one JSON endpoint, on the user's own machine, so a web framework would
# add a dependency and nothing the page needs.

PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")
PAGE_FILES = {  # URL path -> (file in PAGE_DIR, content type); nothing else is served
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
MAX_BODY = 4 << 20  # bytes of one picture sent to /api/read
DRAIN_LIMIT = 64 << 20  # a larger body is not even read to its end: the connection is closed


class Reader:
    """One model reading pictures for the page and its API, one picture at a time."""

    def __init__(self, model, path):
        self.model, self.lock = model, threading.Lock()
        units, digits = voting_units(model)
        run_dir = os.path.dirname(path)
        self.about = {"model": path, "run": os.path.basename(run_dir),
                      "test_accuracy": tested_accuracy(run_dir),
                      "cell": type(model.layers[-2]).__name__, "units": units.tolist(),
                      "unit_digits": digits.tolist()}
        how_it_reads(model, np.zeros((1, *model.input_shape[1:]), np.float32))  # trace it now,
        # so the first drawing is answered in milliseconds, not in half a second

    def read(self, data):
        """The bytes of a picture -> what the page shows (see README, The page's API)."""
        if not data:
            raise UsageError("the body is empty; send the bytes of a PNG, JPEG, BMP or GIF picture")
        seen = to_mnist_form(decode_picture(data, "the picture"))
        if seen is None:
            raise UsageError("the picture is blank: no digit to read")
        with self.lock:  # the model's traced functions are built on first use: once
            read = how_it_reads(self.model, as_sequences(seen[None]))
        readout = read["readout"][0]
        return {"digit": int(readout[-1].argmax()), "probabilities": rounded(readout[-1]),
                "readout": rounded(readout), "seen": seen.tolist(),
                "state": {name: rounded(values[0]) for name, values in read["state"].items()},
                "units": read["units"].tolist(), "unit_digits": read["unit_digits"].tolist()}


def rounded(values, digits=4):
    """Floats for JSON, to 4 decimals: a readout is 280 of them, the state 4,480."""
    return np.round(np.asarray(values, np.float64), digits).tolist()


class PageHandler(http.server.BaseHTTPRequestHandler):
    """GET the page's files and /api/model; POST a picture to /api/read. Every answer of
    the API, errors included, is JSON; no request, however bad, stops the server."""

    server_version = "rnn_mnist"
    protocol_version = "HTTP/1.1"  # keep-alive, so the page's requests reuse one connection
    disable_nagle_algorithm = True  # else the body waits ~40 ms for the ACK of the headers

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/api/model":
            return self.send_json(200, self.server.reader.about)
        if path == "/api/read":
            return self.send_json(405, {"error": "POST the bytes of a picture to /api/read"})
        if path not in PAGE_FILES:
            return self.send_json(404, {"error": f"no page at {path}; the page is at /"})
        name, content_type = PAGE_FILES[path]
        with open(os.path.join(PAGE_DIR, name), "rb") as f:
            self.send_body(200, f.read(), content_type)

    def do_POST(self):
        if self.path.split("?")[0] != "/api/read":
            return self.send_json(404, {"error": f"nothing to POST to at {self.path}; "
                                                 "POST a picture to /api/read"})
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True  # what follows the headers cannot be told apart
            return self.send_json(411, {"error": "send the picture's bytes with a Content-Length"})
        if length > MAX_BODY:
            self.drain(length)
            return self.send_json(413, {"error": f"the body is {length:,} bytes, more than the "
                                                 f"{MAX_BODY:,} a picture may have; send a smaller one"})
        try:
            answer = self.server.reader.read(self.rfile.read(length))
        except UsageError as e:
            return self.send_json(400, {"error": str(e)})
        except Exception as e:  # the server keeps serving; the user gets one line, not a traceback
            print(f"rnn_mnist.py serve: could not read a picture ({type(e).__name__}: {e})",
                  file=sys.stderr)
            return self.send_json(500, {"error": f"could not read the picture ({type(e).__name__})"})
        self.send_json(200, answer)

    def drain(self, length):
        """Read a refused body to its end, so the client hears the answer rather than a reset."""
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:  # the client gave up
                return
            length -= len(chunk)

    def send_json(self, status, obj):
        self.send_body(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def send_body(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # one line per request with --verbose, else none
        if self.server.verbose:
            super().log_message(format, *args)


class PageServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # one line, not the standard traceback
        error = sys.exc_info()[1]
        print(f"rnn_mnist.py serve: a request from {client_address[0]} failed "
              f"({type(error).__name__}: {error})", file=sys.stderr)


def page_server(reader, host="127.0.0.1", port=8000, verbose=False):
    """An HTTP server for the page, bound but not yet serving (call serve_forever)."""
    try:
        server = PageServer((host, port), PageHandler)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}); give --port another "
                         "number (0: any free one) or --host an address of this machine") from None
    server.reader, server.verbose = reader, verbose
    return server


# ----------------------------------------------------------------------------
# Command line


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except where there is none to show (None, or a switch that is off)."""

    def _get_help_string(self, action):  # the one hook argparse offers for this
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (problem and fix), not usage plus error."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def whole_number(minimum):
    """An argparse type: a whole number no smaller than `minimum`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be {minimum} or more")
        return value
    return parse


positive_int, non_negative_int = whole_number(1), whole_number(0)


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def run_name(text):
    if not text or text in (".", "..") or "/" in text or "\\" in text or os.sep in text:
        raise argparse.ArgumentTypeError(f"'{text}' must be a plain folder name, "
                                         "without path separators or '..'")
    return text


LATEST_RUN = ""  # what --resume means without a name


def run_to_resume(text):
    return text if text == LATEST_RUN else run_name(text)


def build_parser():
    parser = Parser(prog="rnn_mnist.py [train]",
                    description="Train an LSTM that reads MNIST digits row by row, "
                                "then test it on the 10,000 test images.",
                    epilog="Other commands: evaluate, predict, export, serve "
                           "(python rnn_mnist.py COMMAND --help).",
                    formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    add_data_arguments(data)
    data.add_argument("--validation-size", type=non_negative_int, default=5000, metavar="N",
                      help="hold out the last N training images to pick the best epoch "
                           "(0: keep the last epoch)")
    data.add_argument("--shift", type=non_negative_int, default=2, metavar="PIXELS",
                      help="move each training image by up to this many pixels, at random, "
                           "every epoch (0: no augmentation)")
    data.add_argument("--max-train-samples", type=positive_int, metavar="N",
                      help="use only the first N training images (validation included), "
                           "for quick trials")
    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=sorted(RECURRENT_CELLS), default="lstm",
                       help="recurrent cell: lstm, or gru (fewer gates, slightly faster)")
    model.add_argument("--units", type=positive_int, default=128, metavar="N",
                       help="units per recurrent layer")
    model.add_argument("--layers", type=positive_int, default=1, metavar="N",
                       help="stacked recurrent layers")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=positive_int, default=8, metavar="N",
                          help="passes over the training set")
    training.add_argument("--batch-size", type=positive_int, default=128, metavar="N",
                          help="images per step")
    training.add_argument("--learning-rate", type=positive_float, default=5e-3, metavar="RATE",
                          help="Adam's starting learning rate")
    training.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                          help="cosine: decay the rate to zero over the run; constant: keep it")
    training.add_argument("--seed", type=non_negative_int, default=1, metavar="N", help="seed for weights and shuffling")
    training.add_argument("--intra-op-threads", type=non_negative_int, default=INTRA_OP_THREADS,
                          metavar="N",
                          help="threads that share one TensorFlow operation (0: TensorFlow's "
                               "choice); this model's operations are too small to split well")
    training.add_argument("--inter-op-threads", type=non_negative_int, metavar="N",
                          help="TensorFlow operations that may run at once (0: TensorFlow's "
                               "choice); default: one per CPU replica, so each core runs a replica")
    training.add_argument("--distribute", choices=DISTRIBUTE_CHOICES, default="auto",
                          help="where to train: none (one device: one core, or one GPU), mirrored "
                               "(every GPU of this machine; without one, --cpu-replicas CPU devices), "
                               "multi-worker (the machines that TF_CONFIG names); auto: multi-worker "
                               "when TF_CONFIG is set, else mirrored, or none with exactly one GPU")
    training.add_argument("--cpu-replicas", type=positive_int, metavar="N",
                          help="on a machine without a GPU: replicas of the model, one per logical "
                               "CPU device, each training on its part of the batch; default: the "
                               "number of cores")
    training.add_argument("--steps-per-execution", type=positive_int, default=STEPS_PER_EXECUTION,
                          metavar="N", help="training steps in one call of TensorFlow's graph: the "
                          "same steps, fewer pauses between them; Ctrl-C is honoured within N steps")
    training.add_argument("--deterministic", action="store_true",
                          help="make every operation deterministic (a little slower): the same "
                               "seed and settings give the same weights, resumed or not")
    output = parser.add_argument_group("output")
    output.add_argument("--logdir", default=DEFAULT_LOGDIR, metavar="DIR",
                        help="folder that holds one sub-folder per run")
    output.add_argument("--run-name", type=run_name, metavar="NAME",
                        help="this run's folder in --logdir; without it, the start time "
                             "(YYYYmmdd-HHMMSS)")
    output.add_argument("--resume", nargs="?", const=LATEST_RUN, type=run_to_resume, metavar="RUN",
                        help="continue the run RUN in --logdir (without RUN: the run with the "
                             "newest checkpoint) from its last checkpoint; only --epochs, the "
                             "output flags and where it runs (the thread flags, --distribute, "
                             "--cpu-replicas, --steps-per-execution) may change")
    output.add_argument("--checkpoint-every", type=positive_int, default=100, metavar="STEPS",
                        help="save a checkpoint every STEPS batches, besides every epoch")
    output.add_argument("--log-every", type=positive_int, default=50, metavar="STEPS",
                        help="log the training loss and accuracy to TensorBoard every STEPS batches")
    output.add_argument("--figures-every", type=non_negative_int, default=1, metavar="EPOCHS",
                        help="draw the TensorBoard pictures (confusion matrix, mistakes, readout "
                             "and gates over the rows) every EPOCHS epochs (0: never)")
    output.add_argument("--quiet", action="store_true", help="no progress bars, epoch lines, resume line or summary")
    output.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's start-up and runtime log messages")
    return parser


def add_data_arguments(group):
    group.add_argument("--data", metavar="PATH",
                       help="a local mnist.npz (keys x_train, y_train, x_test, y_test) or a folder "
                            "of the four IDX files (optionally .gz); default: download the Keras "
                            "copy, verified by sha256, and cache it in $KERAS_HOME/datasets")
    group.add_argument("--download-url", default=MNIST_URL, metavar="URL",
                       help="where to download mnist.npz from when --data is not given")


def add_model_arguments(parser):
    parser.add_argument("--model", metavar="PATH",
                        help="a trained model.keras; default: the newest one in --logdir")
    parser.add_argument("--logdir", default=DEFAULT_LOGDIR, metavar="DIR",
                        help="where to look for the newest model")
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's start-up and runtime log messages")


def command_parser(command, description):
    return Parser(prog=f"rnn_mnist.py {command}", description=description,
                  formatter_class=HelpFormatter)


def build_evaluate_parser():
    parser = command_parser("evaluate", "Test a trained model on the 10,000 MNIST test images: "
                                        "accuracy, loss, per-class accuracy, confusion matrix.")
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=1000, metavar="N",
                        help="images per batch")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return parser


def build_predict_parser():
    parser = command_parser("predict", "Name the digit in your own pictures (PNG, JPEG, BMP or "
                                       "GIF; any size, colour or polarity).")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="pictures of one digit each")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per image instead of a line")
    parser.add_argument("--show-input", metavar="DIR",
                        help="write the 28x28 image the model saw, for each picture, into DIR")
    return parser


def build_export_parser():
    parser = command_parser("export", "Export a trained model as a TensorFlow SavedModel for "
                                      "serving: uint8 images [N, 28, 28] in, probabilities out.")
    add_model_arguments(parser)
    parser.add_argument("--out", metavar="DIR",
                        help="the SavedModel folder to create; default: saved_model beside the model")
    parser.add_argument("--tflite", action="store_true",
                        help="also write model.tflite into the SavedModel folder")
    return parser


def build_serve_parser():
    parser = command_parser("serve", "Serve a page where you draw a digit and watch the model read "
                                     "it, row by row; and its API, POST /api/read.")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0: every address of this machine)")
    parser.add_argument("--port", type=non_negative_int, default=8000,
                        help="port to listen on (0: any free one)")
    return parser


def refuse_used_run_dir(run_dir):
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        raise UsageError(f"{run_dir} already holds a run; choose another --run-name")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UsageError(f"{run_dir} is a file, not a folder; choose another --run-name")


def prepare_run_dir(run_dir):
    """Create a fresh run folder; never reuse one that holds an earlier run."""
    refuse_used_run_dir(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the run folder {run_dir} ({e.strerror}); "
                         "give --logdir a folder you can write to") from None
    if not os.access(run_dir, os.W_OK):
        raise UsageError(f"cannot write to {run_dir}; give --logdir a folder you can write to")
    return run_dir


def write_json(path, obj):
    """Write JSON atomically, so a crash never leaves half a file."""
    partial = path + ".part"
    with open(partial, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(partial, path)


def check_sizes(n_train_images, args):
    if args.shift >= TIMESTEPS // 2:
        raise UsageError(f"--shift {args.shift} would move digits out of the frame; "
                         f"choose 0 to {TIMESTEPS // 2 - 1} pixels")
    if args.validation_size >= n_train_images:
        raise UsageError(f"--validation-size {args.validation_size} leaves no training images "
                         f"out of {n_train_images}; choose a smaller one")
    n_fit = n_train_images - args.validation_size
    if args.batch_size > n_fit:
        raise UsageError(f"--batch-size {args.batch_size} is larger than the {n_fit} training "
                         "images; choose a smaller one")


# Settings a resumed run may change (when given); any other must match its config.json.
RESUMABLE_SETTINGS = {"epochs", "checkpoint_every", "log_every", "figures_every", "logdir",
                      "resume", "intra_op_threads", "inter_op_threads", "distribute",
                      "cpu_replicas", "steps_per_execution"}
SESSION_SETTINGS = {"quiet", "verbose"}  # this command's own, never taken from the run
MODEL_SHAPE_SETTINGS = ("cell", "units", "layers")


def latest_run(logdir):
    """The run in `logdir` whose checkpoint was written last, or None."""
    return newest_run_with(logdir, os.path.join("checkpoints", "checkpoint"))


def resumed_settings(args, given):
    """The settings of the run to resume, with what may change taken from this command."""
    name = args.resume or latest_run(args.logdir)
    if name is None:
        raise UsageError(f"no run with a checkpoint in {args.logdir}; start one without --resume, "
                         "or point --logdir at the folder that holds it")
    run_dir = os.path.join(args.logdir, name)
    if not os.path.isfile(os.path.join(run_dir, "checkpoints", "checkpoint")):
        raise UsageError(f"{run_dir} holds no checkpoint to resume from; start a new run instead")
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {run_dir}/config.json ({e}); the run cannot be resumed") from None
    if "run_name" in given:
        raise UsageError("give the run to resume as --resume NAME, not with --run-name")
    for key in sorted(set(given) - RESUMABLE_SETTINGS - SESSION_SETTINGS):
        if given[key] != config.get(key):
            flag = "--" + key.replace("_", "-")
            if key in MODEL_SHAPE_SETTINGS:
                raise UsageError(f"{flag} {given[key]} would change the model of run {name} "
                                 f"({config.get(key)}); start a new run to change it")
            raise UsageError(f"{flag} cannot change when resuming (run {name} used "
                             f"{config.get(key)}); start a new run to change it")
    settings = argparse.Namespace(**{key: config.get(key, value) for key, value in vars(args).items()})
    for key in (RESUMABLE_SETTINGS & set(given)) | SESSION_SETTINGS:
        setattr(settings, key, getattr(args, key))
    settings.run_name = name
    return settings, run_dir


def restore(state, run_dir):
    """Load the latest checkpoint into `state`; refuse one that does not fit the model."""
    manager = checkpoint_manager(state, os.path.join(run_dir, "checkpoints"))
    state.optimizer.build(state.model.trainable_variables)  # so its slots exist to restore into
    try:
        tf.train.Checkpoint(state=state).restore(manager.latest_checkpoint).assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        reason = str(e).strip().splitlines()[0][:160]
        raise UsageError(f"the checkpoint in {run_dir} does not fit the model its config.json "
                         f"describes ({reason}); start a new run instead") from None


def prepare_training(settings, x_train, y_train, unroll=True):
    """Seed, split off the validation images, and build and compile the model (in the
    strategy's scope, when there is one)."""
    keras.utils.set_random_seed(settings.seed)
    train_data, val_data = split_validation(as_sequences(x_train), y_train, settings.validation_size)
    steps = -(-len(train_data[0]) // settings.batch_size)
    model = make_model(train_data[0].shape[1:], NUM_CLASSES, settings.cell, settings.units,
                       settings.layers, unroll)
    compile_model(model, settings.learning_rate, steps * settings.epochs, settings.lr_schedule)
    # Adam's slots made now, in the scope: made inside the first distributed step instead,
    # Keras 3.15 fails with "You must feed a value for placeholder tensor"
    # (keras-team/keras#23085). The fix, keras-team/keras#23087, is not in 3.15.x: this line
    # can go once requirements.txt asks for a Keras that has it.
    model.optimizer.build(model.trainable_variables)
    return model, train_data, val_data


def print_summary(metrics, run_dir, logdir):
    print(f"\ntest accuracy {metrics['test_accuracy']:.2%}  (loss {metrics['test_loss']:.4f}, "
          f"{metrics['test_images']:,} images)")
    epochs = f"{metrics['epochs']} epoch" + ("s" if metrics["epochs"] != 1 else "")
    print(f"trained {epochs} in {metrics['train_seconds']:.1f} s "
          f"({metrics['samples_per_second']:,.0f} samples/s); best epoch {metrics['best_epoch']}")
    print(f"run saved in {run_dir}  ({MODEL_FILE}, config.json, metrics.json, TensorBoard logs)")
    print(f"view it with: tensorboard --logdir {logdir}")


def resume_line(state, settings, run_dir, n_train):
    """Where a resumed run continues: its run, epoch and step, and the checkpoint."""
    steps = -(-n_train // settings.batch_size)
    epoch, step = int(state.epoch.numpy()) + 1, int(state.step_in_epoch.numpy())
    where = f"step {step + 1}/{steps} of epoch {epoch}/{settings.epochs}" if step else \
        f"the start of epoch {epoch}/{settings.epochs}"
    checkpoint = os.path.basename(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")))
    return f"resuming run {settings.run_name} at {where} (checkpoint {checkpoint} in {run_dir})"


def resume_command(settings):
    logdir = "" if settings.logdir == DEFAULT_LOGDIR else f" --logdir {settings.logdir}"
    return f"python rnn_mnist.py --resume {settings.run_name}{logdir}"


def run(args, given):
    """Load, train, test and record one run (or continue one); return its metrics."""
    settings, run_dir = settings_of_run(args, given)
    tf_config = os.environ.get("TF_CONFIG") if settings.distribute in ("auto", "multi-worker") else None
    placement(settings.distribute, 0, tf_config)  # a mistake in TF_CONFIG is found before any work
    x_train, y_train, x_test, y_test = load_mnist(settings.data, url=settings.download_url)
    if settings.max_train_samples:
        x_train, y_train = x_train[:settings.max_train_samples], y_train[:settings.max_train_samples]
    check_sizes(len(x_train), settings)

    quiet_tensorflow(settings.verbose)
    distribute, worker, on_cpu = placement(settings.distribute,
                                           len(tf.config.list_physical_devices("GPU")), tf_config)
    strategy = start_strategy(settings, distribute, on_cpu)
    if worker.count > 1:
        settings, run_dir = agreed_run(strategy, worker, settings, run_dir, args, given)
    if args.resume is None and worker.chief:
        prepare_run_dir(run_dir)
    with strategy.scope():
        model, train_data, val_data = prepare_training(settings, x_train, y_train, unroll=on_cpu)
    state = training_state(model)
    if args.resume is not None:
        resume(state, settings, run_dir, len(train_data[0]), quiet=settings.quiet or not worker.chief)
    config = dict(vars(settings), run_dir=run_dir, data_source=settings.data or settings.download_url,
                  train_images=len(train_data[0]), validation_images=len(val_data[0]),
                  test_images=len(x_test), parameters=model.count_params(), strategy=distribute,
                  replicas=strategy.num_replicas_in_sync, workers=worker.count,
                  tensorflow=tf.__version__, keras=keras.__version__,
                  python=platform.python_version(), machine=platform.machine())
    config.pop("resume")
    summaries = SummaryBuffer(run_dir) if worker.chief else None  # the chief writes the run folder
    if worker.chief:
        write_json(os.path.join(run_dir, "config.json"), config)
        if args.resume is None:
            log_run_start(summaries, model, config)
    try:
        history = train(state, train_data, val_data, settings, run_dir, summaries,
                        quiet=settings.quiet, strategy=strategy, worker=worker)
    except (Interrupted, Diverged, *(worker_lost_errors() if worker.count > 1 else ())) as stop:
        report_stop(stop, state, settings, run_dir, worker)
    finally:
        if summaries is not None:
            summaries.close()
    if worker.count > 1:
        print(f"worker {worker.index} of {worker.count}{' (chief)' if worker.chief else ''} finished: "
              f"weights {weights_fingerprint(model)}", flush=True)
    if not worker.chief:
        return {"worker": worker.index, "weights_fingerprint": weights_fingerprint(model)}
    return test_and_record(state, history, settings, run_dir, as_sequences(x_test), y_test,
                           len(val_data[0]))


def settings_of_run(args, given):
    """The run's settings and folder: a new run's, or those of the run to resume."""
    if args.resume is not None:
        return resumed_settings(args, given)
    settings = argparse.Namespace(**vars(args))
    settings.run_name = args.run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(args.logdir, settings.run_name)
    refuse_used_run_dir(run_dir)  # now, before the data is loaded; again when it is made
    return settings, run_dir


def agreed_run(strategy, worker, settings, run_dir, args, given):
    """Every worker takes the chief's run: its start time, or the newest run it resumes."""
    name = agree_with_chief(strategy, worker, settings.run_name)
    if name == settings.run_name:
        return settings, run_dir
    if args.resume is not None:
        return resumed_settings(argparse.Namespace(**dict(vars(args), resume=name)), given)
    settings.run_name = name
    return settings, os.path.join(settings.logdir, name)


def resume(state, settings, run_dir, n_train, quiet):
    """Restore the run's last checkpoint into `state`, and say where it goes on."""
    restore(state, run_dir)
    if int(state.epoch.numpy()) >= settings.epochs:
        raise UsageError(f"run {settings.run_name} has finished its {int(state.epoch.numpy())} "
                         "epochs; give --epochs a larger number to train it further")
    if not quiet:
        print(resume_line(state, settings, run_dir, n_train))


def report_stop(stop, state, settings, run_dir, worker):
    """One line on why training stopped early and what was kept; exits."""
    where = f"epoch {int(state.epoch.numpy()) + 1}, step {int(state.step_in_epoch.numpy())}"
    if isinstance(stop, Interrupted):
        signum = stop.args[0] or signal.SIGTERM  # None: another worker was asked to stop
        said = f"{signal.Signals(signum).name} received" if stop.args[0] else "another worker stopped"
        print(f"{said}: stopped at {where}, with a checkpoint saved in {run_dir}.\n"
              f"resume with: {resume_command(settings)}", file=sys.stderr)
        raise SystemExit(128 + signum)
    if isinstance(stop, Diverged):
        checkpoints = os.path.join(run_dir, "checkpoints")
        kept = [what for what, there in [("checkpoint", tf.train.latest_checkpoint(checkpoints)),
                                         (MODEL_FILE, os.path.exists(os.path.join(run_dir, MODEL_FILE)))]
                if there]
        print(f"rnn_mnist.py: error: {stop}; training stopped"
              + (f", keeping the last good {' and '.join(kept)} in {run_dir}" if kept else "")
              + "; try a smaller --learning-rate", file=sys.stderr)
        raise SystemExit(1)
    said = re.search(r"(Collective ops is aborted by: .*|.*[Cc]onnection .*|.*[Dd]eadline .*|.*[Tt]imed out.*)",
                     stop.message or "")
    reason = (said.group(1) if said else type(stop).__name__).strip()[:160]
    print(f"rnn_mnist.py: error: worker {worker.index} of {worker.count} lost the others at {where} "
          f"({reason}); start every worker again with --resume to go on from the last checkpoint "
          f"in {run_dir}", file=sys.stderr)
    raise SystemExit(1)


def test_and_record(state, history, settings, run_dir, x_test, y_test, n_val):
    """Test the best epoch's model once, write metrics.json and the test summaries; the metrics."""
    best = keras.models.load_model(os.path.join(run_dir, MODEL_FILE))
    probabilities = predict(best, x_test)
    test = scores(probabilities, y_test)
    log_test_results(run_dir, test, confusion_matrix(y_test.astype(np.int64), probabilities.argmax(axis=1)),
                     len(history))
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_images": len(x_test),
        "epochs": len(history),
        "best_epoch": int(state.best_epoch.numpy()),
        "best_val_accuracy": float(state.best_val_accuracy.numpy()) if n_val else None,
        "train_seconds": float(state.train_seconds.numpy()),
        "samples_per_second": float(np.mean([r["samples_per_second"] for r in history])),
        "history": history,
    }
    write_json(os.path.join(run_dir, "metrics.json"), metrics)
    if not settings.quiet:
        print_summary(metrics, run_dir, settings.logdir)
    return metrics


def configure_tensorflow(intra_op=INTRA_OP_THREADS, inter_op=INTER_OP_THREADS):
    """Set TensorFlow's thread pools (possible only before its first operation runs), and
    turn off its graph optimizer (Grappler): on this model's graphs it costs 1.3 s at
    the first step and gains nothing measurable afterwards (README, Performance)."""
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


def evaluate_command(args):
    """The whole test set through a trained model: printed tables, and the figures returned."""
    quiet_tensorflow(args.verbose)
    configure_tensorflow()
    model, path = load_trained_model(args.model, args.logdir)
    _, _, x_test, y_test = load_mnist(args.data, url=args.download_url)
    print(model_line(path, args.model is None), file=sys.stderr if args.json else sys.stdout)
    x = as_sequences(x_test)
    predict(model, x[:args.batch_size], args.batch_size)  # warm-up: tracing
    started = time.perf_counter()
    probabilities = predict(model, x, args.batch_size)
    seconds = time.perf_counter() - started
    counts = confusion_matrix(y_test.astype(np.int64), probabilities.argmax(axis=1))
    results = {
        "model": path,
        "images": len(y_test),
        **scores(probabilities, y_test),
        "per_class_accuracy": [float(counts[d, d] / max(counts[d].sum(), 1)) for d in range(NUM_CLASSES)],
        "confusion_matrix": counts.tolist(),
        "images_per_second": len(y_test) / seconds,
    }
    if args.json:
        print(json.dumps(results))
    else:
        print(f"\ntest accuracy {results['accuracy']:.2%}  loss {results['loss']:.4f}  "
              f"({results['images']:,} images, {results['images_per_second']:,.0f} images/s)\n")
        print(format_per_class(counts) + "\n")
        print("confusion matrix (rows: true digit, columns: predicted)")
        print(format_confusion(counts))
    return results


def predict_command(args):
    """Name the digit in each picture; return one record per picture."""
    quiet_tensorflow(args.verbose)
    configure_tensorflow()
    inputs = []
    for path in args.images:  # every picture is checked before any is predicted
        image = to_mnist_form(read_picture(path))
        if image is None:
            raise UsageError(f"{path} is blank: no digit to read")
        inputs.append(image)
    shown = []
    if args.show_input:
        shown = [os.path.join(args.show_input, os.path.splitext(os.path.basename(p))[0] + "-28x28.png")
                 for p in args.images]
        clashes = [p for p in shown if os.path.exists(p)] or (
            [p for p in shown if shown.count(p) > 1])
        if clashes:
            raise UsageError(f"{clashes[0]} exists already or would be written twice; "
                             "give --show-input an empty folder")
    model, path = load_trained_model(args.model, args.logdir)
    print(model_line(path, args.model is None), file=sys.stderr if args.json else sys.stdout)
    probabilities = predict(model, as_sequences(np.stack(inputs)))
    records = []
    for i, (picture, p) in enumerate(zip(args.images, probabilities)):
        ranked = np.argsort(p)[::-1]
        record = {"image": picture, "digit": int(ranked[0]), "probability": float(p[ranked[0]]),
                  "probabilities": [round(float(v), 6) for v in p]}
        if shown:
            os.makedirs(args.show_input, exist_ok=True)
            write_png(shown[i], inputs[i])
            record["model_input"] = shown[i]
        records.append(record)
        if args.json:
            print(json.dumps(record))
        else:
            runners_up = ", ".join(f"{d} ({p[d]:.1%})" if p[d] >= 0.001 else f"{d} (<0.1%)"
                                   for d in ranked[1:3])
            print(f"{picture}: {ranked[0]}  ({p[ranked[0]]:.1%})   then {runners_up}"
                  + (f"   model saw {shown[i]}" if shown else ""))
    return records


def export_command(args):
    quiet_tensorflow(args.verbose)
    model, path = load_trained_model(args.model, args.logdir)
    out = args.out or os.path.join(os.path.dirname(path), "saved_model")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError(f"{out} exists already; give --out a new folder")
    print(model_line(path, args.model is None))
    try:
        written = export_model(model, out, tflite=args.tflite)
    except OSError as e:
        raise UsageError(f"cannot write {out} ({e.strerror}); give --out a folder you can write to") from None
    print("exported")
    for item in written:
        print(f"  {item}")
    print("serving signature 'serving_default': images uint8 [N, 28, 28] (0-255, white digit on "
          "black) -> probabilities float32 [N, 10]")
    if args.tflite:
        print("model.tflite: the same, one image at a time ([1, 28, 28]) until resized with "
              "interpreter.resize_tensor_input(input_index, [N, 28, 28]) and allocate_tensors()")
    return {"model": path, "written": written}


def serve_command(args):
    """Serve the page until Ctrl-C (or SIGTERM); return where it was served."""
    quiet_tensorflow(args.verbose)
    configure_tensorflow()
    model, path = load_trained_model(args.model, args.logdir)
    reader = Reader(model, path)
    server = page_server(reader, args.host, args.port, args.verbose)
    host, port = server.server_address[:2]
    address = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/"
    print(model_line(path, args.model is None))
    print(f"serving the page at {address}  (Ctrl-C to stop)", flush=True)
    previous = {sig: signal.signal(sig, signal.default_int_handler)  # SIGTERM stops as Ctrl-C does,
                for sig in (signal.SIGINT, signal.SIGTERM)}           # even where Ctrl-C was ignored
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        for sig in previous:  # a second Ctrl-C does not break into the shutdown
            signal.signal(sig, signal.SIG_IGN)
        print("stopped serving", flush=True)
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {"model": path, "address": address}


COMMANDS = {
    "train": (build_parser, None),
    "evaluate": (build_evaluate_parser, evaluate_command),
    "predict": (build_predict_parser, predict_command),
    "export": (build_export_parser, export_command),
    "serve": (build_serve_parser, serve_command),
}


def given_settings(argv, dests):
    """The settings named on the command line, with their values (defaults left out)."""
    not_given = object()
    parser = build_parser()
    parser.set_defaults(**{dest: not_given for dest in dests})
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not not_given}


def split_command(argv):
    """(command, its arguments): the first word names the command; without one, train."""
    if not argv or argv[0].startswith("-"):
        return "train", argv
    if argv[0] in COMMANDS:
        return argv[0], argv[1:]
    close = difflib.get_close_matches(argv[0], COMMANDS, n=1, cutoff=0.5)
    raise UsageError(f"'{argv[0]}' is not a command; " + (f"did you mean '{close[0]}'? " if close else "")
                     + f"the commands are {', '.join(COMMANDS)} (python rnn_mnist.py COMMAND --help)")


def main(argv=None):
    """Run one command (train when none is named) and return its results.

    A user's mistake prints one line and exits with status 2. Without `argv`, this
    process is the command: its words are sys.argv, and TensorFlow's log is held back
    until it exits.
    """
    until_exit = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        command, argv = split_command(argv)
        build, execute = COMMANDS[command]
        args = build().parse_args(argv)
        with runtime_log_held(args.verbose, until_exit):
            if execute is not None:
                return execute(args)
            return run(args, given_settings(argv, vars(args)))
    except UsageError as e:
        print(f"rnn_mnist.py: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        print("\nrnn_mnist.py: interrupted; nothing was saved", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
    except BrokenPipeError:  # the reader of the output left early (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's recipe
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()  # main returns the metrics for callers; errors exit with their own status
