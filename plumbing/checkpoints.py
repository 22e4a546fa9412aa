"""A run's checkpoints: the training state they hold, saved as training goes, and the
newest one that reads back whole found again (damaged ones set aside, with one line)."""

import json
import os
import re
import shutil
import tempfile

from .errors import REASON_CHARS, UsageError, say
from .lazy_tensorflow import tf
from .orders import reading_fingerprint

CHECKPOINTS_KEPT = 3  # the newest checkpoints of a run kept in its checkpoints/


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
    state.epoch_timed = tf.Variable(tf.zeros(2, tf.float64))  # images, seconds of the current
    # epoch's training so far, across stops: its samples/s wherever it was resumed
    state.reading = tf.Variable(reading_fingerprint(model))  # the order its pixels are read in
    return state


LATER_STATE = ("epoch_timed", "reading")  # parts of the state that older checkpoints do not hold


def checkpoint_manager(state, folder):
    """Saves `state` into `folder` and finds its latest checkpoint there."""
    return tf.train.CheckpointManager(tf.train.Checkpoint(state=state), folder,
                                      max_to_keep=CHECKPOINTS_KEPT)


def history_of(state):
    return json.loads(state.history.numpy().decode())


class Checkpoints:
    """Saves the training state, and writes the summaries held since the last save.

    Under a multi-worker strategy every worker must take part in each save; only the
    chief saves into the run folder, the others into a temporary folder that is
    removed when training ends.
    """

    def __init__(self, state, run_dir, summaries, worker):
        self.state, self.summaries, self.chief = state, summaries, worker.chief
        self.folder = os.path.join(run_dir, "checkpoints")
        if not worker.chief:  # named for the run and worker, so a killed worker's is found again
            self.folder = os.path.join(tempfile.gettempdir(), f"rnn_mnist-{os.path.basename(run_dir)}"
                                                              f"-worker{worker.index}-checkpoints")
            self.close()
        self.manager = checkpoint_manager(state, self.folder)

    def save(self, global_step, step_in_epoch, sums, timed):
        self.state.step_in_epoch.assign(step_in_epoch)
        self.state.epoch_sums.assign(sums)
        self.state.epoch_timed.assign(timed)
        self.manager.save(checkpoint_number=global_step)
        if self.summaries is not None:
            self.summaries.flush()

    def close(self):
        if not self.chief:
            shutil.rmtree(self.folder, ignore_errors=True)


CHECKPOINT_FILE = re.compile(r"ckpt-(\d+)\.(index|data-\d+-of-\d+)")


def checkpoints_in(folder):
    """The checkpoints in `folder`, newest first, found by their files, so that a damaged
    `checkpoint` list cannot hide them."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    numbers = {int(m.group(1)) for m in map(CHECKPOINT_FILE.fullmatch, names) if m}
    return [os.path.join(folder, f"ckpt-{n}") for n in sorted(numbers, reverse=True)]


def newest_saved(folder):
    """The newest checkpoint in `folder` that was saved whole (its .index is written last),
    or None; whether it still reads is for `newest_readable` to find."""
    return next((p for p in checkpoints_in(folder) if os.path.isfile(p + ".index")), None)


def damage_of(prefix):
    """Why the checkpoint `prefix` cannot be read back, or None when every value in it reads
    (TensorFlow checks each against its checksum as it reads it)."""
    if not os.path.isfile(prefix + ".index"):
        return "its .index file is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except (tf.errors.OpError, IndexError, ValueError) as e:
        return str(e).strip().splitlines()[0][:REASON_CHARS] or type(e).__name__
    return None


def set_aside(prefix):
    """Move a damaged checkpoint's files into checkpoints/damaged/: kept, and out of the way."""
    folder, name = os.path.split(prefix)
    aside = os.path.join(folder, "damaged")
    os.makedirs(aside, exist_ok=True)
    for file in os.listdir(folder):
        if file.startswith(name + "."):
            os.replace(os.path.join(folder, file), os.path.join(aside, file))


def newest_readable(folder):
    """The newest checkpoint in `folder` that reads back whole, or None; the damaged ones
    newer than it are set aside, each said in one line, and the `checkpoint` list is made
    to name what is left."""
    chosen = None
    for prefix in checkpoints_in(folder):
        reason = damage_of(prefix)
        if reason is None:
            chosen = prefix
            break
        set_aside(prefix)
        say(f"the checkpoint {os.path.basename(prefix)} in {folder} is damaged ({reason}); it is "
            f"moved into {folder}/damaged", "warning")
    try:
        listed = tf.train.get_checkpoint_state(folder)
    except ValueError:  # an empty `checkpoint` file
        listed = None
    if chosen and (listed is None or os.path.basename(listed.model_checkpoint_path) != os.path.basename(chosen)):
        tf.compat.v1.train.update_checkpoint_state(  # the list CheckpointManager keeps
            folder, chosen, all_model_checkpoint_paths=checkpoints_in(folder)[::-1])
    return chosen


def restore(state, run_dir):
    """Load the newest checkpoint that reads into `state`; refuse one that reads but does not
    fit the model. The checkpoint, or None when the run has none yet (it starts afresh)."""
    folder = os.path.join(run_dir, "checkpoints")
    prefix = newest_readable(folder)
    if prefix is None:
        return None
    state.optimizer.build(state.model.trainable_variables)  # so its slots exist to restore into
    held = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    into, reads = state, state.reading.numpy()
    missing = [name for name in LATER_STATE if f"state/{name}/.ATTRIBUTES/VARIABLE_VALUE" not in held]
    if missing:
        into = tf.Module()  # a checkpoint of an earlier version: what it holds; the rest as made
        for name, part in vars(state).items():
            if not name.startswith("_") and name not in missing:
                setattr(into, name, part)
    try:
        tf.train.Checkpoint(state=into).restore(prefix).assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        reason = str(e).strip().splitlines()[0][:REASON_CHARS]
        raise UsageError(f"the checkpoint {os.path.basename(prefix)} in {run_dir} reads, but does not "
                         f"fit the model its config.json describes ({reason}); start a new run "
                         "instead") from None
    if state.reading.numpy() != reads:
        raise UsageError(f"the checkpoint {os.path.basename(prefix)} in {run_dir} was trained reading "
                         f"{state.reading.numpy().decode()}, and its config.json says "
                         f"{reads.decode()}; resume it as it was trained, or start a new run")
    return prefix


def epochs_trained(prefix):
    try:
        return int(tf.train.load_checkpoint(prefix).get_tensor("state/epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.OpError, ValueError, IndexError):
        return -1  # damaged: the resume will say so, and go on from an older one
