"""A run's folder and its life: made fresh, checkpointed as it trains, stopped on a
signal with one line, and resumed exactly where it stood.

A run folder holds config.json, model.keras (the best epoch's), metrics.json,
checkpoints/ and TensorBoard's event files.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile

from .atomic import replaced_atomically
from .batches import batches_in
from .distribute import agree_with_chief
from .errors import Diverged, Interrupted, UsageError
from .lazy_tensorflow import keras, tf

DEFAULT_LOGDIR = "Visualize"
MODEL_FILE = "model.keras"  # in each run folder: the best model by validation accuracy
CHECKPOINTS_KEPT = 3  # the newest checkpoints of a run kept in its checkpoints/
REASON_CHARS = 160  # of an error from TensorFlow, at most this much is quoted in the one line
# Settings a resumed run may change (when given); any other must match its config.json.
RESUMABLE_SETTINGS = {"epochs", "checkpoint_every", "log_every", "figures_every", "logdir",
                      "resume", "intra_op_threads", "inter_op_threads", "distribute",
                      "cpu_replicas", "steps_per_execution", "worker_wait"}
SESSION_SETTINGS = {"quiet", "verbose"}  # this command's own, never taken from the run
MODEL_SHAPE_SETTINGS = ("cell", "units", "layers")


# ----------------------------------------------------------------------------
# Run folders

def newest_run_with(logdir, filename):
    """The name of the run in `logdir` whose `filename` was written last, or None."""
    found = []
    for name in os.listdir(logdir) if os.path.isdir(logdir) else []:
        path = os.path.join(logdir, name, filename)
        if os.path.isfile(path):
            found.append((os.path.getmtime(path), name))
    return max(found)[1] if found else None


def latest_run(logdir):
    """The run in `logdir` whose checkpoint was written last, or None."""
    return newest_run_with(logdir, os.path.join("checkpoints", "checkpoint"))


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


def settings_of_run(args, given):
    """The run's settings and folder: a new run's, or those of the run to resume."""
    if args.resume is not None:
        return resumed_settings(args, given)
    settings = argparse.Namespace(**vars(args))
    settings.run_name = args.run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(args.logdir, settings.run_name)
    refuse_used_run_dir(run_dir)  # now, before the data is loaded; again when it is made
    return settings, run_dir


def run_config(settings, run_dir, model, strategy_name, strategy, worker, images):
    """What config.json records: every setting of the run, resolved, with where its data came
    from, how many images of each split (`images`), and the machine and library versions."""
    config = dict(vars(settings), run_dir=run_dir, data_source=settings.data or settings.download_url,
                  **{f"{split}_images": count for split, count in images.items()},
                  parameters=model.count_params(), strategy=strategy_name,
                  replicas=strategy.num_replicas_in_sync, workers=worker.count,
                  tensorflow=tf.__version__, keras=keras.__version__,
                  python=platform.python_version(), machine=platform.machine())
    config.pop("resume")
    return config


def agreed_run(strategy, worker, settings, run_dir, args, given):
    """Every worker takes the chief's run: its start time, or the newest run it resumes."""
    name = agree_with_chief(strategy, worker, settings.run_name)
    if name == settings.run_name:
        return settings, run_dir
    if args.resume is not None:
        return resumed_settings(argparse.Namespace(**dict(vars(args), resume=name)), given)
    settings.run_name = name
    return settings, os.path.join(settings.logdir, name)


# ----------------------------------------------------------------------------
# Checkpoints

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

    def save(self, global_step, step_in_epoch, sums):
        self.state.step_in_epoch.assign(step_in_epoch)
        self.state.epoch_sums.assign(sums)
        self.manager.save(checkpoint_number=global_step)
        if self.summaries is not None:
            self.summaries.flush()

    def close(self):
        if not self.chief:
            shutil.rmtree(self.folder, ignore_errors=True)


def save_model_atomically(model, path):
    partial = path[:-len(".keras")] + ".partial.keras"  # Keras insists on the extension
    with replaced_atomically(path, partial):
        model.save(partial)


# ----------------------------------------------------------------------------
# Resume

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
        reason = str(e).strip().splitlines()[0][:REASON_CHARS]
        raise UsageError(f"the checkpoint in {run_dir} does not fit the model its config.json "
                         f"describes ({reason}); start a new run instead") from None


def resume(state, settings, run_dir, n_train, quiet):
    """Restore the run's last checkpoint into `state`, and say where it goes on."""
    restore(state, run_dir)
    if int(state.epoch.numpy()) >= settings.epochs:
        raise UsageError(f"run {settings.run_name} has finished its {int(state.epoch.numpy())} "
                         "epochs; give --epochs a larger number to train it further")
    if not quiet:
        print(resume_line(state, settings, run_dir, n_train))


def resume_line(state, settings, run_dir, n_train):
    """Where a resumed run continues: its run, epoch and step, and the checkpoint."""
    steps = batches_in(n_train, settings.batch_size)
    epoch, step = int(state.epoch.numpy()) + 1, int(state.step_in_epoch.numpy())
    where = f"step {step + 1}/{steps} of epoch {epoch}/{settings.epochs}" if step else \
        f"the start of epoch {epoch}/{settings.epochs}"
    checkpoint = os.path.basename(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")))
    return f"resuming run {settings.run_name} at {where} (checkpoint {checkpoint} in {run_dir})"


def how_to_go_on(run_dir):
    """What every worker of a run that broke off should do: resume, or start again when no
    checkpoint was saved yet (a resume would find none)."""
    if tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")):
        return f"start every worker again with --resume to go on from the last checkpoint in {run_dir}"
    return f"no checkpoint was saved yet: remove {run_dir} and start every worker again"


def resume_command(settings):
    logdir = "" if settings.logdir == DEFAULT_LOGDIR else f" --logdir {settings.logdir}"
    return f"python rnn_mnist.py --resume {settings.run_name}{logdir}"


# ----------------------------------------------------------------------------
# Stops

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
    reason = (said.group(1) if said else type(stop).__name__).strip()[:REASON_CHARS]
    print(f"rnn_mnist.py: error: worker {worker.index} of {worker.count} lost the others at {where} "
          f"({reason}); {how_to_go_on(run_dir)}", file=sys.stderr)
    raise SystemExit(1)
