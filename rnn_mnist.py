"""rnn_mnist: an LSTM that reads each MNIST digit as a sequence of 28 rows.

    pip install -r requirements.txt
    python rnn_mnist.py                                   # download MNIST, train, test
    python rnn_mnist.py --data ../shared/data/mnist.npz   # offline, from a local copy
    tensorboard --logdir Visualize                        # watch and compare the runs
    python -m pytest tests                                # the test suite

Each 28x28 image is read top to bottom, one row of 28 pixels per timestep. The
recurrent layer's last output feeds a dense softmax over the ten digits; the loss
is cross-entropy, the gradients flow back through all 28 steps, and Adam follows
a cosine learning-rate schedule. Every run gets its own folder under `Visualize/`
with TensorBoard logs, the resolved config, the best model and the test metrics.
"""

import argparse
import datetime
import gzip
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile


def _import_tensorflow_quietly():
    """Import TensorFlow with its start-up chatter held back; return what it said.

    TensorFlow 2.21 writes its oneDNN notice and absl warnings straight to file
    descriptor 2 while it is imported, past TF_CPP_MIN_LOG_LEVEL, so Python's
    `sys.stderr` cannot catch them: the descriptor itself is pointed at a
    temporary file for the import. `--verbose` prints what was held back; an
    import that fails prints it at once, so a real error is never hidden.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401  (the import is the point)
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


TENSORFLOW_STARTUP_LOG = _import_tensorflow_quietly()

import keras  # noqa: E402  (after the quiet TensorFlow import above)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

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
EXIT_USAGE = 2


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


def shift_randomly(images, max_shift):
    """Move each image by up to `max_shift` pixels up/down and left/right, at random.

    A digit written a little higher or further left is the same digit; showing the
    network such copies is what lifts a 128-unit LSTM past 99% on the test set.
    Works on a batch [N, rows, cols] inside the tf.data pipeline: pad with zeros,
    then take each image's own 28x28 window with a gather.
    """
    n = tf.shape(images)[0]
    rows, cols = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift]])
    offsets = tf.random.uniform([2, n], 0, 2 * max_shift + 1, dtype=tf.int32)
    row_index = offsets[0][:, None] + tf.range(rows)[None, :]
    col_index = offsets[1][:, None] + tf.range(cols)[None, :]
    window = tf.gather(padded, row_index, axis=1, batch_dims=1)
    return tf.gather(window, col_index, axis=2, batch_dims=1)


def training_batches(x, y, batch_size, max_shift=0, seed=None):
    """Shuffled batches, reshuffled every epoch, randomly shifted when `max_shift` > 0."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if max_shift:
        dataset = dataset.map(lambda images, labels: (shift_randomly(images, max_shift), labels),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def split_validation(x, y, size):
    """Hold out the last `size` training examples for validation."""
    if size == 0:
        return (x, y), (x[:0], y[:0])
    return (x[:-size], y[:-size]), (x[-size:], y[-size:])


# ----------------------------------------------------------------------------
# Model

RECURRENT_LAYERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def make_model(input_shape, num_classes=NUM_CLASSES, cell="lstm", units=128, layers=1):
    """Stacked recurrent layers over the rows; the last step's output feeds a softmax."""
    recurrent = RECURRENT_LAYERS[cell]
    inputs = keras.Input(shape=input_shape, name="rows")
    x = inputs
    for i in range(layers):
        x = recurrent(units, return_sequences=i < layers - 1, name=f"{cell}_{i + 1}")(x)
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


class Progress(keras.callbacks.Callback):
    """Two tqdm bars (epochs, and batches of this epoch) and one fixed-format line per epoch.

    It also clocks the training part of each epoch, validation excluded, for the
    throughput figure: Keras's history records no times.
    """

    def __init__(self, epochs, steps_per_epoch, samples_per_epoch, disable=False):
        super().__init__()
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.samples_per_epoch = samples_per_epoch
        self.disable = disable
        self.train_seconds = []

    def on_train_begin(self, logs=None):
        self.epoch_bar = tqdm(total=self.epochs, desc="training", unit="epoch",
                              dynamic_ncols=True, disable=self.disable)

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        self.training_done = None
        self.batch_bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}",
                              unit="batch", leave=False, dynamic_ncols=True, disable=self.disable)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self.batch_bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}",
                                   acc=f"{logs.get('accuracy', float('nan')):.2%}", refresh=False)
        self.batch_bar.update(1)

    def on_test_begin(self, logs=None):
        if self.training_done is None:  # validation starts: the epoch's training is over
            self.training_done = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        done = self.training_done or time.perf_counter()
        self.train_seconds.append(done - self.started)
        self.batch_bar.close()
        line = (f"epoch {epoch + 1:>{len(str(self.epochs))}}/{self.epochs}"
                f"  loss {logs.get('loss', float('nan')):.4f}"
                f"  acc {logs.get('accuracy', float('nan')):7.2%}")
        if "val_accuracy" in logs:
            line += (f"  | val loss {logs['val_loss']:.4f}"
                     f"  val acc {logs['val_accuracy']:7.2%}")
        line += (f"  | lr {learning_rate_now(self.model):.2e}"
                 f"  {self.samples_per_epoch / self.train_seconds[-1]:,.0f} samples/s")
        if not self.disable:
            self.epoch_bar.write(line)
        self.epoch_bar.set_postfix(val_acc=f"{logs.get('val_accuracy', float('nan')):.2%}",
                                   refresh=False)
        self.epoch_bar.update(1)

    def on_train_end(self, logs=None):
        self.epoch_bar.close()


def learning_rate_now(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def train(model, train_data, val_data, epochs, batch_size, run_dir, max_shift=0, seed=None,
          quiet=False):
    """Fit with progress bars, TensorBoard logs and the best model kept as model.keras."""
    (x, y), (x_val, y_val) = train_data, val_data
    steps = -(-len(x) // batch_size)
    progress = Progress(epochs, steps, len(x), disable=quiet)
    model_path = os.path.join(run_dir, "model.keras")
    has_val = len(x_val) > 0
    callbacks = [
        progress,
        keras.callbacks.TensorBoard(log_dir=run_dir, write_graph=False),
        keras.callbacks.ModelCheckpoint(model_path, monitor="val_accuracy" if has_val else "accuracy",
                                        mode="max", save_best_only=True),
    ]
    history = model.fit(training_batches(x, y, batch_size, max_shift, seed), epochs=epochs,
                        shuffle=False,  # the dataset shuffles itself, seeded
                        validation_data=(x_val, y_val) if has_val else None,
                        callbacks=callbacks, verbose=0)
    return history.history, progress.train_seconds, model_path


def evaluate(model, x, y, batch_size=1000):
    loss, accuracy = model.evaluate(x, y, batch_size=batch_size, verbose=0)
    return {"loss": float(loss), "accuracy": float(accuracy)}


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


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


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


def build_parser():
    parser = Parser(prog="rnn_mnist.py",
                    description="Train an LSTM that reads MNIST digits row by row, "
                                "then test it on the 10,000 test images.",
                    formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="PATH",
                      help="a local mnist.npz (keys x_train, y_train, x_test, y_test) or a folder "
                           "of the four IDX files (optionally .gz); default: download the Keras "
                           "copy, verified by sha256, and cache it in $KERAS_HOME/datasets")
    data.add_argument("--download-url", default=MNIST_URL, metavar="URL",
                      help="where to download mnist.npz from when --data is not given")
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
    model.add_argument("--cell", choices=sorted(RECURRENT_LAYERS), default="lstm",
                       help="recurrent cell: lstm, or gru (fewer gates, slightly faster)")
    model.add_argument("--units", type=positive_int, default=128, metavar="N",
                       help="units per recurrent layer")
    model.add_argument("--layers", type=positive_int, default=1, metavar="N",
                       help="stacked recurrent layers")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=positive_int, default=20, metavar="N",
                          help="passes over the training set")
    training.add_argument("--batch-size", type=positive_int, default=128, metavar="N",
                          help="images per step")
    training.add_argument("--learning-rate", type=positive_float, default=2e-3, metavar="RATE",
                          help="Adam's starting learning rate")
    training.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                          help="cosine: decay the rate to zero over the run; constant: keep it")
    training.add_argument("--seed", type=non_negative_int, default=1, metavar="N", help="seed for weights and shuffling")
    output = parser.add_argument_group("output")
    output.add_argument("--logdir", default=DEFAULT_LOGDIR, metavar="DIR",
                        help="folder that holds one sub-folder per run")
    output.add_argument("--run-name", type=run_name, metavar="NAME",
                        help="this run's folder in --logdir; without it, the start time "
                             "(YYYYmmdd-HHMMSS)")
    output.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    output.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's start-up and runtime log messages")
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


def print_summary(metrics, run_dir, logdir):
    print(f"\ntest accuracy {metrics['test_accuracy']:.2%}  (loss {metrics['test_loss']:.4f}, "
          f"{metrics['test_images']:,} images)")
    print(f"trained {metrics['epochs']} epochs in {metrics['train_seconds']:.1f} s "
          f"({metrics['samples_per_second']:,.0f} samples/s); best epoch {metrics['best_epoch']}")
    print(f"run saved in {run_dir}  (model.keras, config.json, metrics.json, TensorBoard logs)")
    print(f"view it with: tensorboard --logdir {logdir}")


def run(args):
    """Load, train, test and record one run; return its metrics."""
    if args.verbose:
        sys.stderr.write(TENSORFLOW_STARTUP_LOG)
    else:
        tf.get_logger().setLevel("ERROR")
    name = args.run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(args.logdir, name)
    refuse_used_run_dir(run_dir)  # now, before the data is loaded; again when it is made

    x_train, y_train, x_test, y_test = load_mnist(args.data, url=args.download_url)
    if args.max_train_samples:
        x_train, y_train = x_train[:args.max_train_samples], y_train[:args.max_train_samples]
    check_sizes(len(x_train), args)
    prepare_run_dir(run_dir)

    keras.utils.set_random_seed(args.seed)
    train_data, val_data = split_validation(as_sequences(x_train), y_train, args.validation_size)
    x_test = as_sequences(x_test)
    steps = -(-len(train_data[0]) // args.batch_size)
    model = make_model(x_test.shape[1:], NUM_CLASSES, args.cell, args.units, args.layers)
    compile_model(model, args.learning_rate, steps * args.epochs, args.lr_schedule)

    config = dict(vars(args), run_name=name, run_dir=run_dir,
                  data_source=args.data or args.download_url,
                  train_images=len(train_data[0]), validation_images=len(val_data[0]),
                  test_images=len(x_test), parameters=model.count_params(),
                  tensorflow=tf.__version__, keras=keras.__version__,
                  python=platform.python_version(), machine=platform.machine())
    write_json(os.path.join(run_dir, "config.json"), config)

    started = time.perf_counter()
    history, epoch_seconds, model_path = train(model, train_data, val_data, args.epochs,
                                               args.batch_size, run_dir, args.shift, args.seed,
                                               quiet=args.quiet)
    train_seconds = time.perf_counter() - started

    best = keras.models.load_model(model_path)  # the best epoch by validation accuracy
    test = evaluate(best, x_test, y_test)
    monitored = history.get("val_accuracy") or history["accuracy"]
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_images": len(x_test),
        "epochs": len(history["loss"]),
        "best_epoch": int(np.argmax(monitored)) + 1,
        "best_val_accuracy": float(max(history["val_accuracy"])) if "val_accuracy" in history else None,
        "train_seconds": train_seconds,
        "samples_per_second": len(train_data[0]) * len(epoch_seconds) / sum(epoch_seconds),
        "history": {key: [float(v) for v in values] for key, values in history.items()},
    }
    write_json(os.path.join(run_dir, "metrics.json"), metrics)
    if not args.quiet:
        print_summary(metrics, run_dir, args.logdir)
    return metrics


def main(argv=None):
    """Parse `argv`, train and test; return the metrics. A user's mistake exits with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"rnn_mnist.py: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


if __name__ == "__main__":
    main()  # main returns the metrics for callers; errors exit with their own status
