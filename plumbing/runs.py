"""A run's folder and its life: made fresh, checkpointed as it trains, stopped on a
signal with one line, and resumed exactly where it stood.

A run folder holds config.json, model.keras (the best epoch's), metrics.json,
checkpoints/ and TensorBoard's event files.
"""

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import tempfile

from .atomic import replaced_atomically, write_json
from .batches import batches_in
from .distribute import agree_with_chief
from .checkpoints import epochs_trained, newest_saved, restore
from .errors import REASON_CHARS, STOP_SIGNALS, Diverged, Fault, Interrupted, Stopped, UsageError
from .lazy_tensorflow import keras, tf
from .locks import LOCK_FILE, Busy, held
from .mnist_files import TRAIN_IMAGES
from .summaries import SummaryBuffer, log_run_start

DEFAULT_LOGDIR = "Visualize"
MODEL_FILE = "model.keras"  # in each run folder: the best model by validation accuracy
# Settings a resumed run may change (when given); any other must match its config.json.
RESUMABLE_SETTINGS = {"epochs", "checkpoint_every", "log_every", "figures_every", "logdir",
                      "resume", "intra_op_threads", "inter_op_threads", "distribute",
                      "cpu_replicas", "steps_per_execution", "worker_wait"}
LATER_SETTINGS = {"order": "rows", "pixels_per_step": 28, "permutation": None, "clip_norm": 0.0}
# what a run recorded before these settings were made had: its config.json does not name them
SESSION_SETTINGS = {"quiet", "verbose"}  # this command's own, never taken from the run
MODEL_SHAPE_SETTINGS = ("cell", "units", "layers", "order", "pixels_per_step", "permutation")


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


def trial_of(run_dir):
    """The --max-train-samples of a quick trial's run (it trained on part of the images), or None."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return json.load(f).get("max_train_samples") or None
    except (OSError, ValueError, AttributeError):
        return None


def newest_model_run(logdir):
    """(The run whose model the commands take by default, the newer quick trials passed over):
    the newest run that trained on all the training images, else the newest quick trial."""
    runs = []
    for name in os.listdir(logdir) if os.path.isdir(logdir) else []:
        path = os.path.join(logdir, name, MODEL_FILE)
        if os.path.isfile(path):
            runs.append((os.path.getmtime(path), name))
    names = [name for _, name in sorted(runs, reverse=True)]
    whole = [name for name in names if trial_of(os.path.join(logdir, name)) is None]
    if not whole:
        return (names[0] if names else None), []
    return whole[0], names[:names.index(whole[0])]


def latest_run(logdir):
    """The run in `logdir` started or resumed last (its config.json is written then), or None."""
    return newest_run_with(logdir, "config.json")


def refuse_used_run_dir(run_dir):
    if os.path.isdir(run_dir) and set(os.listdir(run_dir)) - {LOCK_FILE}:
        name = os.path.basename(run_dir)
        raise UsageError(f"{run_dir} already holds a run; choose another --run-name, or go on with "
                         f"that one with --resume {shlex.quote(name)}")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UsageError(f"{run_dir} is a file, not a folder; choose another --run-name")


def dated_name(logdir, stamp):
    """A run name made from the start time, with -2, -3... when a run of that second exists."""
    names = [stamp] + [f"{stamp}-{n}" for n in range(2, 1000)]
    return next(name for name in names if not os.path.exists(os.path.join(logdir, name)))


def made_run_folder(settings, run_dir, named):
    """Create a fresh run folder; a dated name that another run took meanwhile moves on to the
    next free one (os.mkdir fails for all but one of two runs that ask for the same)."""
    stamp = settings.run_name[:len("YYYYmmdd-HHMMSS")]
    try:
        os.makedirs(settings.logdir, exist_ok=True)
        while True:
            try:
                os.mkdir(run_dir)
                break
            except FileExistsError:
                if named:
                    break  # found empty just now: the lock decides which run has it
                settings.run_name = dated_name(settings.logdir, stamp)
                run_dir = os.path.join(settings.logdir, settings.run_name)
    except OSError as e:
        raise UsageError(f"cannot create the run folder {run_dir} ({e.strerror}); "
                         "give --logdir a folder you can write to") from None
    return settings, run_dir


def check_writable(run_dir, fresh):
    """Refuse, before anything is trained, a run folder (or its checkpoints/) that cannot be written."""
    for folder in (run_dir, os.path.join(run_dir, "checkpoints")):
        if os.path.isdir(folder):
            try:
                tempfile.TemporaryFile(dir=folder).close()
            except OSError as e:
                fix = "give --logdir a folder you can write to" if fresh else "make it writable, then resume"
                raise Fault(f"cannot write to {folder} ({e.strerror}); {fix}") from None


@contextlib.contextmanager
def run_folder(settings, run_dir, fresh, named, chief):
    """The run's folder, made (a fresh run) or found (a resumed one), checked to be writable,
    and this process's alone while the run lasts (locks.held: the system lets go of it when
    the process ends, however it ends). Yields the settings and the folder (a dated name can
    move on to the next)."""
    if not chief:  # a worker other than the chief writes no run folder
        yield settings, run_dir
        return
    if fresh:
        if named:  # a dated name taken meanwhile moves on to the next instead
            refuse_used_run_dir(run_dir)
        settings, run_dir = made_run_folder(settings, run_dir, named)
    with contextlib.ExitStack() as holding:
        try:
            holding.enter_context(held(run_dir))
        except Busy:
            raise UsageError(f"run {settings.run_name} is in use by another rnn_mnist process that "
                             "trains or resumes it; wait for it to end" + (
                                 ", or give another --run-name" if fresh else "")) from None
        if fresh and named:
            refuse_used_run_dir(run_dir)  # made by another run that ended just now
        check_writable(run_dir, fresh)
        remove_partial_files(run_dir)  # of a run of it that was killed: no one else writes here now
        yield settings, run_dir


def settings_of_run(args, given):
    """The run's settings and folder: a new run's, or those of the run to resume."""
    if args.resume is not None:
        settings, run_dir = resumed_settings(args, given)
        return permuted_only(settings), run_dir
    settings = permuted_only(argparse.Namespace(**vars(args)))
    if args.max_train_samples and "validation_size" not in given:  # a quick trial holds out
        # the same share as a whole run (5,000 of 60,000), not 5,000 of its few images
        settings.validation_size = args.validation_size * min(args.max_train_samples, TRAIN_IMAGES) // TRAIN_IMAGES
    settings.run_name = args.run_name or dated_name(
        args.logdir, datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    run_dir = os.path.join(args.logdir, settings.run_name)
    refuse_used_run_dir(run_dir)  # now, before the data is loaded; again when it is made
    return settings, run_dir


def permuted_only(settings):
    """A permutation is recorded only for a run that reads its pixels permuted."""
    if settings.order != "permuted":
        settings.permutation = None
    return settings


def run_config(settings, run_dir, model, placement, images):
    """What config.json records: every setting of the run, resolved, with where its data came
    from, how many images of each split (`images`), where it trained (strategy, device,
    replicas, workers, cores, threads), and the machine and library versions."""
    config = dict(vars(settings), run_dir=run_dir, data_source=settings.data or settings.download_url,
                  **{f"{split}_images": count for split, count in images.items()},
                  parameters=model.count_params(), **placement.record(),
                  tensorflow=tf.__version__, keras=keras.__version__,
                  python=platform.python_version(), machine=platform.machine())
    config.pop("resume")
    return config


@contextlib.contextmanager
def records(settings, run_dir, model, placement, images, hparams_keys, resuming):
    """The run's records while it trains: the chief writes config.json and, for a new run, the
    graph, config and hyperparameters (`hparams_keys`) to TensorBoard, and holds the summaries
    it yields until each checkpoint; another worker records nothing (None)."""
    if not placement.worker.chief:
        yield None
        return
    config = run_config(settings, run_dir, model, placement, images)
    write_json(os.path.join(run_dir, "config.json"), config)
    summaries = SummaryBuffer(run_dir)
    try:
        if not resuming:
            log_run_start(summaries, model, config, hparams_keys)
        yield summaries
    finally:
        summaries.close()


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

def partial_model_path(path):
    return path[:-len(".keras")] + ".partial.keras"  # Keras insists on the extension


@contextlib.contextmanager
def best_model_in_place(model, path, save):
    """Save `model` (if `save`) to a partial file, and put it in place at `path` only once
    the body (the checkpoint that records it as the best) has run: the model never runs
    ahead of its checkpoint, and a failed save leaves the earlier best whole."""
    if not save:
        yield
        return
    with replaced_atomically(path, partial_model_path(path)) as partial:
        model.save(partial)
        yield


def remove_partial_files(run_dir):
    """What a write cut short leaves: the best model's partial file, TensorFlow's temporary
    checkpoint folders, and event files of this process that hold nothing."""
    partial = partial_model_path(os.path.join(run_dir, MODEL_FILE))
    if os.path.exists(partial):
        os.remove(partial)
    for folder in glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*_temp")):
        shutil.rmtree(folder, ignore_errors=True)
    for events in glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"), recursive=True):
        if re.search(rf"\.{os.getpid()}\.\d+\.v2$", events) and os.path.getsize(events) == 0:
            os.remove(events)


# ----------------------------------------------------------------------------
# Resume

def resumed_settings(args, given):
    """The settings of the run to resume, with what may change taken from this command."""
    name = args.resume or latest_run(args.logdir)
    if name is None:
        raise UsageError(f"no run to resume in {args.logdir}; start one without --resume, "
                         "or point --logdir at the folder that holds it")
    run_dir = os.path.join(args.logdir, name)
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise UsageError(f"{run_dir} holds no run to resume (no config.json); start a new run instead")
    config = dict(LATER_SETTINGS, **recorded_config(os.path.join(run_dir, "config.json"), args))
    if "run_name" in given:
        raise UsageError("give the run to resume as --resume NAME, not with --run-name")
    for key in sorted(set(given) - RESUMABLE_SETTINGS - SESSION_SETTINGS):
        if given[key] != config.get(key):
            flag = "--" + key.replace("_", "-")
            if key in MODEL_SHAPE_SETTINGS:
                was = "none" if config.get(key) is None else config.get(key)
                raise UsageError(f"{flag} {given[key]} would change the model of run {name} "
                                 f"({was}); start a new run to change it")
            raise UsageError(f"{flag} cannot change when resuming (run {name} used "
                             f"{config.get(key)}); start a new run to change it")
    settings = argparse.Namespace(**{key: config.get(key, value) for key, value in vars(args).items()})
    for key in (RESUMABLE_SETTINGS & set(given)) | SESSION_SETTINGS:
        setattr(settings, key, getattr(args, key))
    settings.run_name = name
    refuse_finished(settings, run_dir, tested(run_dir, "epochs", int))  # now, before the data and the model
    return settings, run_dir


def tested(run_dir, key, kind):
    """`kind` of the `key` that a run's metrics.json records, or None (unfinished, or no run)."""
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            return kind(json.load(f)[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def refuse_finished(settings, run_dir, epochs):
    """A run tested after `epochs` (None: not tested) has nothing left to do at `settings.epochs`."""
    if epochs is not None and epochs >= settings.epochs:
        raise UsageError(f"run {settings.run_name} has finished its {counted(epochs, 'epoch')}; "
                         "give --epochs a larger number to train it further")


def counted(n, word):
    """'1 epoch', '8 epochs'."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


KINDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
RECORDED_ALWAYS = ("cell", "units", "layers", "epochs", "batch_size", "learning_rate", "seed")


def recorded_config(path, args):
    """A run's config.json, checked: an object that holds the run's model and recipe, every
    setting of the type its flag takes (an int for --epochs); else one line, exit status 1."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise Fault(f"cannot read {path} ({e}); the run cannot be resumed: start a new run") from None
    if not isinstance(config, dict):
        raise Fault(f"{path} is damaged (it holds {json.dumps(config)[:40]}, not the run's settings); "
                    "the run cannot be resumed: start a new run")
    for key in RECORDED_ALWAYS:
        if key not in config:
            raise Fault(f"{path} is damaged (it lacks {key}); the run cannot be resumed: start a new run")
    for key, default in vars(args).items():
        value = config.get(key)
        kind = (int, float) if type(default) is float else type(default)
        if default is not None and value is not None and (
                not isinstance(value, kind) or isinstance(value, bool) != isinstance(default, bool)):
            raise Fault(f"{path} is damaged ({key} is {json.dumps(value)[:40]}, not "
                        f"{KINDS[type(default)]}); the run cannot be resumed: start a new run")
    return config


def resume(state, settings, run_dir, n_train, quiet):
    """Restore the run's newest good checkpoint into `state`, and say where it goes on: the
    next step, its test when only that is left, or the start when no checkpoint was made."""
    prefix = restore(state, run_dir)
    if os.path.isfile(os.path.join(run_dir, "metrics.json")):
        refuse_finished(settings, run_dir, int(state.epoch.numpy()))
    if not quiet:
        print(resume_line(state, settings, run_dir, n_train, prefix))


def resume_line(state, settings, run_dir, n_train, prefix):
    """Where a resumed run continues: its run, epoch and step, and the checkpoint."""
    if prefix is None:
        return (f"resuming run {settings.run_name} from the start: it holds no checkpoint that "
                f"reads (it stopped before its first), in {run_dir}")
    steps = batches_in(n_train, settings.batch_size)
    epoch, step, epochs = int(state.epoch.numpy()) + 1, int(state.step_in_epoch.numpy()), settings.epochs
    if epoch > epochs:
        where = f"its test: its {counted(epochs, 'epoch')} were trained"
    elif step >= steps:
        where = f"the end of epoch {epoch}/{epochs} (its {steps} steps done; its validation next)"
    elif step:
        where = f"step {step + 1}/{steps} of epoch {epoch}/{epochs}"
    else:
        where = f"the start of epoch {epoch}/{epochs}"
    return (f"resuming run {settings.run_name} at {where} (checkpoint {os.path.basename(prefix)} "
            f"in {run_dir})")


def how_to_go_on(run_dir):
    """What every worker of a run that broke off should do: resume, or start again when no
    checkpoint was saved yet (a resume would find none)."""
    if newest_saved(os.path.join(run_dir, "checkpoints")):
        return f"start every worker again with --resume to go on from the last checkpoint in {run_dir}"
    return f"no checkpoint was saved yet: remove {run_dir} and start every worker again"


def resume_command(settings):
    """The command that goes on with the run, quoted as a shell needs it."""
    logdir = "" if settings.logdir == DEFAULT_LOGDIR else f" --logdir {shlex.quote(settings.logdir)}"
    return f"python rnn_mnist.py --resume {shlex.quote(settings.run_name)}{logdir}"


# ----------------------------------------------------------------------------
# Stops

class StopRequest:
    """Turns Ctrl-C and SIGTERM into a request the loop honours after the current call of
    the training graph, so the checkpoint it then writes is consistent. A second Ctrl-C
    stops at once."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self.handle) for sig in STOP_SIGNALS}
        return self

    def handle(self, signum, frame):
        self.signal = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def kept(settings, run_dir):
    """(What a run that stopped here keeps, the command that goes on from it, or None)."""
    command = resume_command(settings)
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        return "nothing was saved", None
    newest = newest_saved(os.path.join(run_dir, "checkpoints"))
    if newest is None:
        return (f"no checkpoint was saved yet in {run_dir}",
                f"start it again from the beginning with: {command}")
    if epochs_trained(newest) >= settings.epochs:
        return (f"its {counted(settings.epochs, 'epoch')} were trained and saved in {run_dir}, its test is left",
                f"test it with: {command}")
    return f"the last checkpoint, {os.path.basename(newest)}, is kept in {run_dir}", f"resume with: {command}"


def report_stop(stop, state, settings, run_dir, worker):
    """Stopped, or a Fault: one line on why training stopped early and what was kept."""
    epoch, step = int(state.epoch.numpy()), int(state.step_in_epoch.numpy())
    where = (f"at epoch {epoch + 1}, step {step}" if step else
             f"at the end of epoch {epoch}" if epoch else "before its first step")
    if isinstance(stop, Interrupted):
        signum = stop.args[0] or signal.SIGTERM  # None: another worker was asked to stop
        said = f"{signal.Signals(signum).name} received" if stop.args[0] else "another worker stopped"
        what, how = kept(settings, run_dir) if worker.chief else (
            f"the chief keeps the run's checkpoint in {run_dir}", f"resume with: {resume_command(settings)}")
        raise Stopped(f"{said}: stopped {where}; {what}." + (f"\n{how}" if how else ""), signum)
    if isinstance(stop, Diverged):
        checkpoints = os.path.join(run_dir, "checkpoints")
        good = [what for what, there in [("checkpoint", newest_saved(checkpoints)),
                                         (MODEL_FILE, os.path.exists(os.path.join(run_dir, MODEL_FILE)))]
                if there]
        raise Fault(f"{stop}; training stopped"
                    + (f", keeping the last good {' and '.join(good)} in {run_dir}" if good else "")
                    + "; try a smaller --learning-rate")
    said = re.search(r"(Collective ops is aborted by: .*|.*[Cc]onnection .*|.*[Dd]eadline .*|.*[Tt]imed out.*)",
                     stop.message or "")
    reason = (said.group(1) if said else type(stop).__name__).strip()[:REASON_CHARS]
    raise Fault(f"worker {worker.index} of {worker.count} lost the others {where} "
                f"({reason}); {how_to_go_on(run_dir)}")
