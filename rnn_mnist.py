"""rnn_mnist: an LSTM that reads each MNIST digit as a sequence of 28 rows.

    pip install -r requirements.txt
    python rnn_mnist.py                                   # download MNIST, train, test
    python rnn_mnist.py --data ../shared/data/mnist.npz   # offline, from a local copy
    python rnn_mnist.py --resume                          # continue the newest run
    tensorboard --logdir Visualize                        # watch and compare the runs
    python rnn_mnist.py evaluate --data mnist.npz         # test the newest model again
    python rnn_mnist.py predict my_digit.png              # read your own handwriting
    python rnn_mnist.py export --tflite                   # a SavedModel for serving
    python rnn_mnist.py export --micro                    # int8, for a microcontroller
    python rnn_mnist.py serve                             # draw a digit, watch it read
    TF_CONFIG='{"cluster": ...}' python rnn_mnist.py      # one of several workers
    python -m pytest tests                                # the test suite

Each 28x28 image is read top to bottom, one row of 28 pixels per timestep (or, with
--order and --pixels-per-step, column by column or in a fixed scrambled order, K pixels a
step: 784 steps of one pixel is the research benchmark sequential MNIST). The recurrent
layer's last output feeds a dense softmax over the ten digits; the loss is cross-entropy,
the gradients flow back through all the steps, and Adam follows a cosine learning-rate
schedule. Every run gets its own folder under `Visualize/`
with TensorBoard logs, the resolved config, the best model and the test metrics.

This file is the recipe, to be read top to bottom: the settings, MNIST to sequences,
the model, the training step, the loop and its summaries, the run, `main`. The
plumbing it calls (data files, tf.distribute, checkpoints, pictures, the page's
server, the command line) is in the package `plumbing/`, one module per concern.
"""

import functools
import os

from plumbing.installed import require_installed

require_installed(command=__name__ == "__main__")  # first: a missing package named in one line

import numpy as np  # noqa: E402 (after the check above, like every import below)

from plumbing import checkpoints, cli, distribute, faults, orders, runs, server, using
from plumbing.atomic import write_json
from plumbing.batches import batches_in
from plumbing.errors import Diverged, Error, Fault, Interrupted, Stopped, UsageError  # noqa: F401 (for callers)
from plumbing.figures import epoch_pictures
from plumbing.reading import read_one
from plumbing.graphs import configure_for_predicting, predict
from plumbing.lazy_tensorflow import keras, quiet_tensorflow, runtime_log_held, tf
from plumbing.metrics import confusion_matrix, scores
from plumbing.mnist_files import FEATURES, NUM_CLASSES, TIMESTEPS, as_sequences, load_mnist
from plumbing.summaries import log_test_results, log_weights_and_gradients
from plumbing.training_hooks import TrainingHooks

# ----------------------------------------------------------------------------
# The recipe's settings: each is a flag of the same name (batch_size: --batch-size),
# and together they are the hyperparameters on TensorBoard's HParams dashboard.

RECIPE = dict(
    cell="lstm",           # the recurrent cell: lstm, or gru
    units=128,             # units of each recurrent layer
    layers=1,              # recurrent layers, stacked
    epochs=8,              # passes over the training images
    batch_size=256,        # images per step
    learning_rate=1e-2,    # Adam's rate at the first step...
    lr_schedule="cosine",  # ...decayed to zero at the last along a cosine
    shift=2,               # each training image moved by up to 2 pixels, anew every epoch
    validation_size=5000,  # the last 5,000 training images pick the best epoch
    seed=1,                # of the weights, the order of the images and the shifts
    order="rows",          # the pixels read row by row (or columns, or permuted)...
    pixels_per_step=28,    # ...28 at each step: a row
    permutation="0",       # with order "permuted": its seed, or "bitrev"
    clip_norm=0.0,         # the gradient's norm clipped to this (0: not clipped)
)

# ----------------------------------------------------------------------------
# MNIST to sequences. `as_sequences` scales the uint8 pixels to [0, 1]; an image's rows
# are already in reading order, so row r of an image is timestep r of its sequence.
# Read in another order, the 784 pixels (named row * 28 + column) are taken in that order
# and cut into steps of K: the model's first layer does it (plumbing/orders.py), so that
# whatever uses the model, or an export of it, reads a picture the way it was trained.


def pixel_order(order, permutation=None):
    """The pixels in the order they are read: int32 [784], the pixel read at each place.

    rows: 0, 1, 2, ... 783. columns: 0, 28, 56, ... 756, 1, 29, ... permuted, with a seed S:
    numpy.random.default_rng(S).permutation(784), a fixed scramble that puts neighbours in
    the image hundreds of steps apart (psMNIST). bitrev, S4's: the numbers 0 to 1023 with
    their 10 bits reversed (0, 512, 256, 768, 128, ...), those of 784 or more left out.
    """
    pixels = np.arange(orders.PIXELS, dtype=np.int32)
    if order == "rows":
        return pixels
    if order == "columns":
        return pixels.reshape(TIMESTEPS, FEATURES).T.reshape(-1)
    if permutation == orders.BIT_REVERSAL:
        reversed_bits = [int(f"{i:010b}"[::-1], 2) for i in range(1024)]
        return np.array([i for i in reversed_bits if i < orders.PIXELS], np.int32)
    return np.random.default_rng(int(permutation)).permutation(orders.PIXELS).astype(np.int32)


def shift_randomly(images, max_shift, seed):
    """Move each image by up to `max_shift` pixels up/down and left/right, at random.

    A digit written a little higher or further left is the same digit; showing the
    network such copies is what lifts a 128-unit LSTM past 99% on the test set.
    Works on a batch [N, rows, cols]: pad with zeros, then copy out each image's own
    window of the padded frame. `seed` (a sequence of integers) fixes the shifts, so a
    resumed run sees exactly the batches the interrupted one would have seen.
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
    shuffled = np.random.default_rng([seed, epoch]).permutation(len(x))
    for step in range(first_step, batches_in(len(x), batch_size)):
        index = shuffled[step * batch_size:(step + 1) * batch_size]
        images = x[index]
        if max_shift:
            images = shift_randomly(images, max_shift, [seed, epoch, step])
        yield images, y[index]


def split_validation(x, y, size):
    """Hold out the last `size` training examples for validation."""
    if size == 0:
        return (x, y), (x[:0], y[:0])
    return (x[:-size], y[:-size]), (x[-size:], y[-size:])


# ----------------------------------------------------------------------------
# The model

RECURRENT_CELLS = {"lstm": "LSTM", "gru": "GRU"}  # --cell -> its Keras layer class


def make_model(input_shape, num_classes=NUM_CLASSES, cell="lstm", units=128, layers=1, unroll=True,
               reading=None):
    """Stacked recurrent layers over the steps; the last step's output feeds a softmax.

    `reading` is None for the rows, a row a step; else (pixel order, K), read by a first layer
    that takes the image's pixels in that order, K a step. On a CPU the layers are unrolled
    over the steps: the same cell and the same backpropagation through time, but one graph
    with no loop, which trains faster than TensorFlow's while loop at 28 steps (bench/README.md)
    and exports to TFLite as is. Not past orders.UNROLL_MAX_STEPS (56): measured on 2 cores,
    unrolled is 13% faster at 49 steps, no faster at 112, and slower to build the longer it is
    (4.4 s at 112 steps, 11 s at 196, against 0.6 s for the loop). On a GPU (`unroll=False`), the layers meet Keras's
    conditions for the fused cuDNN kernel: no unrolling, the default activations, no
    recurrent dropout.
    """
    recurrent = getattr(keras.layers, RECURRENT_CELLS[cell])
    inputs = keras.Input(shape=input_shape, name="rows" if reading is None else "image")
    x = inputs if reading is None else orders.reorder_layer(*reading)(inputs)
    unroll = unroll and x.shape[1] <= orders.UNROLL_MAX_STEPS
    for i in range(layers):
        x = recurrent(units, return_sequences=i < layers - 1, unroll=unroll, name=f"{cell}_{i + 1}")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"rnn_mnist_{cell}")


def compile_model(model, learning_rate, total_steps, schedule="cosine"):
    """Adam on cross-entropy, the loss of each image being minus the log of the probability
    given to its true digit; the cosine schedule decays the rate to zero by the last step."""
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model


def learning_rate_now(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


# ----------------------------------------------------------------------------
# The training step


def train_step(model, images, labels, counted, batch_size, clip_norm=0.0):
    """One step of gradient descent on (a replica's part of) a batch -> (its share of the
    batch's mean loss, its correct answers).

    Forward through the steps, cross-entropy, gradients by backpropagation through time,
    clipped if asked, and Adam's update. `counted` is 1 for a real image and 0 for a blank one that
    pads a batch; the loss is summed over the images and divided by the whole batch's
    size, so when the replicas' shares are added up (the strategy adds their gradients
    in `apply_gradients`), the step is the whole batch's, however it was split.
    """
    with tf.GradientTape() as tape:
        probabilities = model(images, training=True)
        loss_sum = tf.reduce_sum(counted * model.loss.call(labels, probabilities))  # the compiled
        # cross-entropy, image by image: Keras's loss object before it takes the mean
    scale = 1.0 / batch_size
    variables = model.trainable_variables
    gradients = [g * scale for g in tape.gradient(loss_sum, variables)]
    if clip_norm:
        gradients = clipped_by_norm(gradients, clip_norm)
    model.optimizer.apply_gradients(zip(gradients, variables))
    predicted = tf.argmax(probabilities, axis=1, output_type=labels.dtype)
    correct = tf.reduce_sum(tf.cast(predicted == labels, tf.int32) * tf.cast(counted, tf.int32))
    return loss_sum * scale, correct


def clipped_by_norm(gradients, clip_norm):
    """The batch's gradient, all weights' together, scaled down to length `clip_norm` when it is
    longer: over hundreds of steps, backpropagation through time can multiply a gradient into
    a step that throws the weights far off (Pascanu et al., 2013).

    A replica holds its part of the batch's gradient, and the length is the whole's: the parts
    are added up first, the whole is clipped, and each replica passes on its share of it, which
    `apply_gradients` adds up again. (Keras's `global_clipnorm` clips each replica's part on
    its own: a different step on two replicas than on one.)
    """
    replicas = tf.distribute.get_replica_context()
    whole, _ = tf.clip_by_global_norm(replicas.all_reduce("sum", gradients), clip_norm)
    return [g / replicas.num_replicas_in_sync for g in whole]


def training_step(model, strategy=None, steps=1, clip_norm=0.0):
    """`train_step` as one graph on the strategy (default: this process's one device):
    `step(batches, stop=False, rows=0)` trains on up to `steps` batches in one call
    (distribute.steps_graph says how the batches reach the replicas)."""
    def step(model, images, labels, counted, batch_size):
        return train_step(model, images, labels, counted, batch_size, clip_norm)
    return distribute.steps_graph(model, strategy, steps, step)


# ----------------------------------------------------------------------------
# The loop over epochs and steps, and its TensorBoard scalars


# TensorBoard sorts its groups of tags (the part before the first "/") and the tags in them
# by name, and opens the first two: the epochs' accuracy and loss (training and validation in
# one chart each), then the pictures of the reading (how_it_reads/...).
EPOCH_TAGS = {"accuracy": "epochs/accuracy", "loss": "epochs/loss",
              "learning_rate": "training/learning_rate", "samples_per_second": "training/samples_per_second"}


class Training:
    """The loop over epochs and steps of one run: a step, a validation, a summary.

    Written as a loop over steps rather than `model.fit`, because fit cannot start in
    the middle of an epoch, checkpoint every N steps, or stop cleanly on a signal
    between two calls of the graph. That machinery is in `hooks` (plumbing/training_hooks.py),
    which the loop calls. `summaries` is None where nothing is logged (a worker that is not
    the chief).
    """

    def __init__(self, state, data, settings, run_dir, summaries, placement):
        self.model, self.settings, self.summaries = state.model, settings, summaries
        (self.x, self.y), (self.x_val, self.y_val) = data
        self.train_step = training_step(self.model, placement.strategy, settings.steps_per_execution,
                                        settings.clip_norm)
        self.hooks = TrainingHooks(state, settings, run_dir, summaries, placement.worker, len(self.x),
                                   self.log_step)

    def fit(self):
        """Train from wherever the run stands to `settings.epochs`; the finished epochs' records."""
        epochs = self.settings.epochs
        with self.hooks.epochs() as left:  # under a progress bar, Ctrl-C a request to stop
            for epoch in left:
                record = self.train_epoch(epoch)
                probabilities = self.validate(record)
                self.log_epoch(epoch + 1, record, probabilities)
                accuracy = record.get("val_accuracy", record["accuracy"])  # picks the best epoch
                self.hooks.end_epoch(epoch + 1, record, accuracy, epoch_line(epoch + 1, epochs, record))
        return self.hooks.history()

    def train_epoch(self, epoch):
        """The steps of one epoch, from the one the run stands at; the epoch's training record."""
        settings = self.settings
        with self.hooks.epoch(epoch) as steps:
            batches = epoch_batches(self.x, self.y, settings.batch_size, settings.seed, epoch,
                                    settings.shift, steps.first)
            for chunk in steps.calls(batches):  # made ahead; a call of the graph trains a chunk
                losses, corrects, stops = self.train_step(chunk, steps.stop_asked(), settings.batch_size)
                steps.done(chunk, losses, corrects, stops)  # counted, logged, checkpointed, stopped
        return steps.record(learning_rate_now(self.model))

    def validate(self, record):
        """Add the validation images' loss and accuracy to the epoch's `record`; their
        probabilities (None without validation images)."""
        if not len(self.x_val):
            return None
        probabilities = predict(self.model, self.x_val)
        record.update({f"val_{k}": v for k, v in scores(probabilities, self.y_val).items()})
        return probabilities

    def log_step(self, step, loss, accuracy):
        if self.summaries is not None and step % self.settings.log_every == 0:
            self.summaries.add("train", "steps/loss", loss, step)
            self.summaries.add("train", "steps/accuracy", accuracy, step)

    def log_epoch(self, epoch, record, probabilities):
        """The epoch's scalars (train and validation, which TensorBoard overlays), the
        histograms of weights and gradients, and every `--figures-every` epochs the pictures."""
        summaries, settings = self.summaries, self.settings
        if summaries is None:
            return
        for key, tag in EPOCH_TAGS.items():
            if record[key] is not None:
                summaries.add("train", tag, record[key], epoch)
        for key in ("loss", "accuracy"):
            if f"val_{key}" in record:
                summaries.add("validation", EPOCH_TAGS[key], record[f"val_{key}"], epoch)
        log_weights_and_gradients(summaries, self.model, self.x[:settings.batch_size],
                                  self.y[:settings.batch_size], epoch)
        if probabilities is not None and settings.figures_every and epoch % settings.figures_every == 0:
            for tag, image in epoch_pictures(self.model, self.x_val, self.y_val, probabilities,
                                             epoch).items():
                summaries.add("validation", tag, image, epoch, kind="image")


def epoch_line(epoch, epochs, record):
    """One fixed-format line per finished epoch."""
    line = (f"epoch {epoch:>{len(str(epochs))}}/{epochs}"
            f"  loss {record['loss']:.4f}  acc {record['accuracy']:7.2%}")
    if "val_accuracy" in record:
        line += f"  | val loss {record['val_loss']:.4f}  val acc {record['val_accuracy']:7.2%}"
    line += f"  | lr {record['learning_rate']:.2e}"
    return line + (f"  {record['samples_per_second']:,.0f} samples/s" if record["samples_per_second"] else "")


# ----------------------------------------------------------------------------
# One run: load, train, test, record


def prepare_training(settings, x_train, y_train, unroll=True):
    """Seed, split off the validation images, and build and compile the model (in the
    strategy's scope, when there is one)."""
    keras.utils.set_random_seed(settings.seed)
    train_data, val_data = split_validation(as_sequences(x_train), y_train, settings.validation_size)
    steps = batches_in(len(train_data[0]), settings.batch_size)
    reading = None if orders.reads_plain_rows(settings.order, settings.pixels_per_step) else (
        pixel_order(settings.order, settings.permutation), settings.pixels_per_step)
    model = make_model(train_data[0].shape[1:], NUM_CLASSES, settings.cell, settings.units,
                       settings.layers, unroll, reading)
    compile_model(model, settings.learning_rate, steps * settings.epochs, settings.lr_schedule)
    # Adam's slots made now, in the scope: made inside the first distributed step instead,
    # Keras 3.15 fails with "You must feed a value for placeholder tensor"
    # (keras-team/keras#23085). The fix, keras-team/keras#23087, is not in 3.15.x: this line
    # can go once requirements.txt asks for a Keras that has it.
    model.optimizer.build(model.trainable_variables)
    return model, train_data, val_data


def run(args, given):
    """Load, train, test and record one run (or continue one); return its metrics.

    `args` is the command line parsed and `given` what it named; `settings` are the run's
    (for a resumed run, from its config.json), and the run folder records them as config.json.
    """
    settings, run_dir = runs.settings_of_run(args, given)
    tf_config = os.environ.get("TF_CONFIG") if settings.distribute in ("auto", "multi-worker") else None
    worker = distribute.this_worker(settings.distribute, tf_config)  # TF_CONFIG checked first
    x_train, y_train, x_test, y_test = load_mnist(settings.data, url=settings.download_url)
    if settings.max_train_samples:
        x_train, y_train = x_train[:settings.max_train_samples], y_train[:settings.max_train_samples]
    cli.check_sizes(len(x_train), settings)
    if settings.max_train_samples and not settings.quiet:
        print(f"training on {len(x_train) - settings.validation_size:,} images: the first "
              f"{len(x_train):,} (--max-train-samples), less the last {settings.validation_size:,} "
              "held out for validation (--validation-size)")

    with distribute.cluster_forming(worker, tf_config, settings.worker_wait):
        quiet_tensorflow(settings.verbose)
        placement = distribute.placed(settings, worker, tf_config)  # strategy, device, replicas, threads
        if worker.count > 1:
            settings, run_dir = runs.agreed_run(placement.strategy, worker, settings, run_dir, args, given)
    # The run folder is this process's alone while it runs; a full disk, a folder that cannot be
    # written, or a stop outside the training loop, ends the run in one line that says what was kept.
    with runs.run_folder(settings, run_dir, fresh=args.resume is None, named=args.run_name is not None,
                         chief=worker.chief) as (settings, run_dir), \
            faults.said_in_one_line(settings, run_dir):
        return train_and_test(settings, run_dir, args.resume is not None, placement,
                              (x_train, y_train), (as_sequences(x_test), y_test))


def train_and_test(settings, run_dir, resuming, placement, train, test):
    """Build the model (or restore it from the run's checkpoint), train it, and test it."""
    worker = placement.worker
    with placement.strategy.scope():
        model, train_data, val_data = prepare_training(settings, *train,
                                                       unroll=placement.device == "cpu")
    state = checkpoints.training_state(model)
    if resuming:
        runs.resume(state, settings, run_dir, len(train_data[0]), quiet=settings.quiet or not worker.chief)
    images = {"train": len(train_data[0]), "validation": len(val_data[0]), "test": len(test[0])}
    with runs.records(settings, run_dir, model, placement, images, RECIPE, resuming) as summaries:
        try:
            history = Training(state, (train_data, val_data), settings, run_dir, summaries, placement).fit()
        except (Interrupted, Diverged, *distribute.worker_lost_errors(worker)) as stop:
            runs.report_stop(stop, state, settings, run_dir, worker)
    if worker.count > 1:
        print(distribute.finished_line(worker, model), flush=True)
    if not worker.chief:
        return {"worker": worker.index, "weights_fingerprint": distribute.weights_fingerprint(model)}
    metrics = test_and_record(state, history, run_dir, *test, len(val_data[0]))
    if not settings.quiet:
        print_summary(metrics, run_dir, settings.logdir, placement)
    return metrics


def test_and_record(state, history, run_dir, x_test, y_test, n_val):
    """Test the best epoch's model once, write metrics.json and the test summaries; the metrics."""
    best = using.load_trained_model(os.path.join(run_dir, runs.MODEL_FILE))[0]
    probabilities = predict(best, x_test)
    test = scores(probabilities, y_test)
    log_test_results(run_dir, test, confusion_matrix(probabilities, y_test), len(history))
    timed = [r["samples_per_second"] for r in history if r["samples_per_second"] is not None]
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_images": len(x_test),
        "epochs": len(history),
        "best_epoch": int(state.best_epoch.numpy()),
        "best_val_accuracy": float(state.best_val_accuracy.numpy()) if n_val else None,
        "train_seconds": float(state.train_seconds.numpy()),
        "samples_per_second": float(np.mean(timed)) if timed else None,
        "history": history,
    }
    write_json(os.path.join(run_dir, "metrics.json"), metrics)
    return metrics


def print_summary(metrics, run_dir, logdir, placement):
    print(f"\ntest accuracy {metrics['test_accuracy']:.2%}  (loss {metrics['test_loss']:.4f}, "
          f"{metrics['test_images']:,} images)")
    speed = f"{metrics['samples_per_second']:,.0f} samples/s, " if metrics["samples_per_second"] else ""
    print(f"trained {runs.counted(metrics['epochs'], 'epoch')} in {metrics['train_seconds']:.1f} s ({speed}{placement.words()}); "
          f"best epoch {metrics['best_epoch']}")
    print(f"run saved in {run_dir}  ({runs.MODEL_FILE}, config.json, metrics.json, TensorBoard logs)")
    if runs.trial_of(run_dir):
        print(f"a quick trial (--max-train-samples): evaluate, predict, serve and export take its "
              f"model only when asked, with --model {run_dir}")
    print(f"view it with: tensorboard --logdir {logdir}")


# ----------------------------------------------------------------------------
# A trained model, from Python (docs/using.md): load it, and read one digit step by step


def load_model(path=None, logdir=runs.DEFAULT_LOGDIR):
    """A model this tool trained, in whatever order it reads: a model.keras, or the run folder
    that holds it (default: the newest in `logdir`). Its input is [N, 28, 28] floats in [0, 1]."""
    quiet_tensorflow(verbose=False)
    configure_for_predicting()
    return using.load_trained_model(path, logdir)[0]


def read(model, image):
    """Read one digit: `image` is a picture's path (PNG, JPEG, BMP, GIF: any size or polarity)
    or MNIST's uint8 [28, 28], white on black. -> {"digit", "probabilities" [10], "readout":
    the probabilities after each step [S, 10] (of a sequence longer than 28 steps, 28 evenly
    spaced ones), "steps": the step each readout follows, from 1; and "state", "units",
    "unit_digits": the gates and state of the units the page shows}."""
    seen = using.picture_as_mnist(image) if isinstance(image, (str, os.PathLike)) else np.asarray(image)
    if seen.shape != (TIMESTEPS, FEATURES):
        raise UsageError(f"an image of shape {seen.shape}; give a picture's path, or a 28x28 array")
    return read_one(model, seen)


# ----------------------------------------------------------------------------
# On a microcontroller (export --micro, docs/micro.md). TensorFlow Lite Micro runs the LSTM
# as one operation over all the steps, in integers: a tensor's real values are
# scale * (q - zero point) for its int8 q, the scale and zero point set from the values it
# takes on training images (the cell state, a sum over many steps, in int16). The converter
# makes that one operation out of a function that runs the layer step by step:


def lstm_step(x, h, c, kernel, recurrent_kernel, bias):
    """One step of Keras's LSTM: the step's input x [N, F], the last output h and cell state c
    [N, units] -> the new (h, c). The four gates come from one product, split: the input gate
    i says how much of the candidate g enters the cell, the forget gate f how much of the old
    cell stays, the output gate o how much of the squashed cell is the output."""
    z = tf.matmul(x, kernel) + tf.matmul(h, recurrent_kernel) + bias
    i, f, g, o = tf.split(z, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


# ----------------------------------------------------------------------------
# The commands

USES = {  # the commands that use a trained model (plumbing/cli.py's PARSERS names them all)
    "evaluate": using.evaluate_command, "predict": using.predict_command,
    "export": functools.partial(using.export_command, lstm_step=lstm_step),
    "serve": server.serve_command}


def main(argv=None):
    """Run one command (train when none is named) and return its results.

    Without `argv`, this process is the command: its words are sys.argv, a mistake or a
    fault prints one line and exits with its status (2, 1), and TensorFlow's log is held back
    until it exits. Given `argv`, from Python: the same command, and what ends it early is
    raised, an Error (UsageError, Fault or Stopped) whose text is that line.
    """
    with cli.answered_in_one_line(command=argv is None):
        command, args, given = cli.parse(cli.words(argv), RECIPE, RECURRENT_CELLS)
        with runtime_log_held(args.verbose, until_exit=argv is None):
            if command != "train":
                return USES[command](args)
            with faults.stops_at_once():  # SIGTERM too, before the run folder is made
                return run(args, given)


if __name__ == "__main__":
    main()  # main returns the metrics for callers; errors exit with their own status
