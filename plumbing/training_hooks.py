"""What the recipe's training loop calls around its steps: where the run stands (a resumed
run starts mid-epoch), the progress bars, the batches made ahead and grouped into calls of
the graph, a checkpoint every N steps and at each epoch's end, a stop that every worker
agrees on, the watchdog over the other workers, and the time trained."""

import contextlib
import json
import os
import time

import numpy as np
from tqdm.auto import tqdm

from .batches import batches_in, chunked, prefetched
from .checkpoints import Checkpoints, history_of
from .distribute import watchdog_for
from .errors import Diverged, Interrupted
from .runs import MODEL_FILE, StopRequest, best_model_in_place, how_to_go_on


class TrainingHooks:
    """The machinery of one run's loop. `log_step(step, loss, accuracy)` is called after every
    step; `summaries` is None where nothing is logged (a worker that is not the chief)."""

    def __init__(self, state, settings, run_dir, summaries, worker, train_images, log_step):
        self.state, self.settings, self.log_step = state, settings, log_step
        self.chief, self.alone = worker.chief, worker.count == 1
        self.quiet = settings.quiet or not worker.chief
        self.steps_per_epoch = batches_in(train_images, settings.batch_size)
        self.global_step = int(state.optimizer.iterations.numpy())
        self.model_path = os.path.join(run_dir, MODEL_FILE)
        self.checkpoints = Checkpoints(state, run_dir, summaries, worker)
        self.watchdog = watchdog_for(worker, lambda: how_to_go_on(run_dir))
        self.stop = StopRequest()
        if not worker.chief:
            print(f"worker {worker.index} of {worker.count}: training; worker 0, the chief, shows the "
                  "progress", flush=True)

    @contextlib.contextmanager
    def epochs(self):
        """The epochs left to train, under a progress bar, with Ctrl-C and SIGTERM turned into a
        request to stop that the steps honour; put away however training ends."""
        state, settings = self.state, self.settings
        self.bar = tqdm(total=settings.epochs, initial=int(state.epoch.numpy()), desc="training",
                        unit="epoch", dynamic_ncols=True, disable=True if self.quiet else None)
        try:
            with self.stop:
                yield range(int(state.epoch.numpy()), settings.epochs)
        except BaseException:  # no half-drawn bar stays above the message on why training stopped
            self.bar.leave = False
            raise
        finally:
            self.bar.close()
            self.checkpoints.close()
            if self.watchdog is not None:
                self.watchdog.stop()

    def epoch(self, epoch):
        return EpochSteps(self, epoch)

    def end_epoch(self, epoch, record, accuracy, line):
        """Epoch `epoch` (from 1) is done: its model kept if `accuracy` is the best yet, its
        `record` added to the history, a checkpoint, its `line` shown; then a stop if asked."""
        state, best = self.state, accuracy > self.state.best_val_accuracy.numpy()
        if best:
            state.best_val_accuracy.assign(accuracy)
            state.best_epoch.assign(epoch)
        state.history.assign(json.dumps(history_of(state) + [record]))
        state.epoch.assign(epoch)
        with best_model_in_place(state.model, self.model_path, best and self.chief):
            self.checkpoints.save(self.global_step, 0, [0.0, 0.0, 0.0], [0.0, 0.0])
        self.heard_from_all()
        if not self.quiet:
            self.bar.write(line)
        self.bar.set_postfix(val_acc=f"{accuracy:.2%}", refresh=False)
        self.bar.update(1)
        if self.stop.signal is not None:  # asked while the epoch ended: it is saved now
            raise Interrupted(self.stop.signal)

    def history(self):
        """The finished epochs' records."""
        return history_of(self.state)

    def add_training_time(self, since):
        now = time.perf_counter()
        self.state.train_seconds.assign_add(now - since)
        return now

    def heard_from_all(self):  # a step or a checkpoint done: every worker took part
        if self.watchdog is not None:
            self.watchdog.alive()


class EpochSteps:
    """One epoch's steps, from the one the run stands at: each counted into the epoch's loss and
    accuracy, logged, checkpointed when one is due, and stopped after when a stop was asked."""

    def __init__(self, hooks, epoch):
        state, self.hooks, self.epoch = hooks.state, hooks, epoch
        self.first = self.step = int(state.step_in_epoch.numpy())
        self.sums = state.epoch_sums.numpy()  # loss, correct, images so far in this epoch
        self.timed = state.epoch_timed.numpy()  # images, seconds of this epoch before a resume
        self.seen_here, self.started = 0, time.perf_counter()
        self.mark = self.started
        self.bar = tqdm(total=hooks.steps_per_epoch, initial=self.first, desc=f"epoch {epoch + 1}",
                        unit="batch", leave=False, dynamic_ncols=True,
                        disable=True if hooks.quiet else None)  # None: no bars where stderr is no terminal

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def calls(self, batches):
        """`batches` made ahead in a thread, in lists of one call of the graph each, cut where a
        checkpoint is due."""
        settings = self.hooks.settings
        return prefetched(chunked(batches, settings.steps_per_execution, settings.checkpoint_every,
                                  self.hooks.global_step))

    def stop_asked(self):
        """Whether this process was asked to stop (the graph adds up every worker's answer)."""
        return self.hooks.stop.signal is not None

    def done(self, batches, losses, corrects, stops):
        """One call of the graph trained `batches`: each step's mean loss and correct answers,
        and how many workers asked to stop."""
        hooks = self.hooks
        for loss, correct, (_, labels) in zip(losses, corrects, batches):
            if not np.isfinite(loss):
                raise Diverged(f"the loss became {loss} at epoch {self.epoch + 1}, step {self.step + 1}")
            n = len(labels)
            self.sums = self.sums + [loss * n, correct, n]
            self.seen_here, self.step, hooks.global_step = self.seen_here + n, self.step + 1, hooks.global_step + 1
            hooks.log_step(hooks.global_step, loss, correct / n)
        self.bar.set_postfix(ordered_dict={"loss": f"{self.sums[0] / self.sums[2]:.4f}",
                                           "acc": f"{self.sums[1] / self.sums[2]:.2%}"}, refresh=False)
        self.bar.update(len(batches))
        hooks.heard_from_all()
        # Asked here, or on another worker: every worker stops after the same step. A request
        # during a call is seen by the next (the signal waits for Python); alone, a worker need
        # not wait for that one to agree.
        stops = stops or (hooks.alone and hooks.stop.signal is not None)
        if stops or hooks.global_step % hooks.settings.checkpoint_every == 0:
            self.mark = hooks.add_training_time(self.mark)
            hooks.checkpoints.save(hooks.global_step, self.step, self.sums,
                                   self.timed + [self.seen_here, self.mark - self.started])
        if stops:
            raise Interrupted(hooks.stop.signal)  # None: the request came to another worker

    def record(self, learning_rate):
        """The epoch's training record, once its steps are done."""
        self.mark = self.hooks.add_training_time(self.mark)
        images, seconds = self.timed + [self.seen_here, self.mark - self.started]
        loss, correct, seen = self.sums
        return {"loss": loss / seen, "accuracy": correct / seen, "learning_rate": learning_rate,
                "samples_per_second": images / seconds if images else None}  # None: not timed
                # (all its steps ran before a resume, from a checkpoint that kept no time)
