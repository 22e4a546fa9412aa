"""Where training runs: tf.distribute's strategy for one device, the cores or GPUs of a
machine, or several workers (TF_CONFIG); how the workers agree and notice a lost one;
and the mechanics of a training graph that runs several steps per call on every replica.
"""

import collections
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from .errors import STOP_SIGNALS, UsageError, say
from .graphs import input_spec, slice_bounds, traced_once
from .cores import cpu_replicas, operations_at_once, usable_cores
from .lazy_tensorflow import configure_tensorflow, tf

STEPS_PER_EXECUTION = 16  # training steps per call of the graph (bench/README.md)

DISTRIBUTE_CHOICES = ("auto", "none", "mirrored", "multi-worker")
WORKER_TIMEOUT_SECONDS = 120  # a worker that hears nothing from the others this long gives up
WORKER_WAIT_SECONDS = 300  # how long a starting worker waits for the others (--worker-wait)
CLUSTER_WATCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_watch.py")
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
    members = cluster.get("chief", []) + cluster.get("worker", [])  # the chief counts first
    rank = index + (len(cluster.get("chief", [])) if role == "worker" else 0)
    return Worker(rank, len(members), rank == 0)


class Placement(collections.namedtuple(
        "Placement", "kind strategy worker device replicas intra_op_threads inter_op_threads cores")):
    """Where a run trains, decided once (`placed`) and handed on whole: the kind of strategy
    (none, mirrored, multi-worker) and the strategy, this worker, the device (cpu or gpu), the
    replicas of the model (once the strategy is made: those of every worker, in sync),
    TensorFlow's threads (None on a GPU: its own choice), and the cores this process may use."""

    def record(self):
        """What config.json says of it."""
        return {"strategy": self.kind, "device": self.device, "replicas": self.replicas,
                "workers": self.worker.count, "cores": self.cores,
                "threads": {"intra_op": self.intra_op_threads, "inter_op": self.inter_op_threads}}

    def words(self):
        """It in a few words, for the summary: "2 CPU replicas, 1 thread each"."""
        if self.device == "gpu":
            said = f"{self.replicas} GPU" + ("s" if self.replicas > 1 else "")
        else:
            said = (f"{self.replicas} CPU replica{'s' if self.replicas > 1 else ''}, "
                    f"{self.intra_op_threads} thread{'s' if self.intra_op_threads > 1 else ''} each")
        return said + (f", worker {self.worker.index} of {self.worker.count}" if self.worker.count > 1 else "")


def this_worker(distribute, tf_config):
    """This process's place among the workers, from TF_CONFIG (checked before any work) when
    it trains with several (`--distribute multi-worker`, or auto with TF_CONFIG set); else ALONE."""
    if distribute == "multi-worker" and not tf_config:
        raise UsageError(f"--distribute multi-worker needs the cluster in TF_CONFIG; {TF_CONFIG_FIX}")
    return worker_from_tf_config(tf_config) if tf_config else ALONE


def placement(settings, worker, multi_worker, gpus, cores):
    """Where this run trains, from the flags and a machine of `gpus` GPUs and `cores` usable
    cores. On a CPU: a replica per core, each with MIN_IMAGES_PER_REPLICA images of the batch
    at least, and an operation of each at once (cores.py); the flags override."""
    kind = settings.distribute
    if kind == "auto":  # mirrored on CPU cores (as fast as slices of a batch written by hand,
        # which it replaced: bench/README.md); a single GPU needs no strategy
        kind = "multi-worker" if multi_worker else "none" if gpus == 1 else "mirrored"
    if gpus:
        return Placement(kind, None, worker, "gpu", gpus if kind == "mirrored" else 1, None, None, cores)
    replicas = 1 if kind != "mirrored" else settings.cpu_replicas or cpu_replicas(cores, settings.batch_size)
    inter = settings.inter_op_threads
    return Placement(kind, None, worker, "cpu", replicas, settings.intra_op_threads,
                     operations_at_once(cores, replicas) if inter is None else inter, cores)


def placed(settings, worker, tf_config):
    """The run's Placement on this machine, with its strategy: TensorFlow's threads and
    determinism set first, as they must be before TensorFlow runs its first operation."""
    where = placement(settings, worker, bool(tf_config), len(tf.config.list_physical_devices("GPU")),
                      usable_cores())
    if where.device == "cpu":
        configure_tensorflow(where.intra_op_threads, where.inter_op_threads)
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(where.kind, where.replicas)
    return where._replace(strategy=strategy, replicas=strategy.num_replicas_in_sync)  # all workers'
    # replicas, and those that a second run in one Python finds already made


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
                say(self.message())
                os._exit(1)  # the main thread is blocked inside TensorFlow: nothing else ends it

    def stop(self):
        self.done.set()


def watchdog_for(worker, how_to_go_on):
    """A Watchdog for a worker among others (None when it trains alone); `how_to_go_on()`
    ends its line."""
    if worker.count == 1:
        return None
    return Watchdog(WORKER_TIMEOUT_SECONDS, lambda: (
        f"worker {worker.index} of {worker.count} heard nothing from the "
        f"others for {WORKER_TIMEOUT_SECONDS} s; {how_to_go_on()}"))


def cluster_addresses(tf_config):
    """The "host:port" of every worker that TF_CONFIG names, the chief first (checked already)."""
    cluster = json.loads(tf_config)["cluster"]
    return cluster.get("chief", []) + cluster.get("worker", [])


def others_line(worker, addresses, seconds):
    others = ", ".join(f"worker {i} at {address}" for i, address in enumerate(addresses)
                       if i != worker.index)
    return (f"worker {worker.index} of {worker.count}: waiting for {others} to join "
            f"(at most {seconds:g} s: --worker-wait)")


def exposure_line(worker, addresses):
    """TensorFlow 2.21's gRPC server binds 0.0.0.0 whatever TF_CONFIG names (its
    grpc_server_lib.cc listens on "0.0.0.0:" + the port): said once, since it opens the
    port to every network the machine is on."""
    port = addresses[worker.index].rsplit(":", 1)[1]
    return (f"worker {worker.index} of {worker.count}: TensorFlow listens on port {port} of every "
            "address of this machine, not only the one TF_CONFIG names: keep the workers on a "
            "private network or behind a firewall")


@contextlib.contextmanager
def cluster_forming(worker, tf_config, seconds):
    """While this worker starts TensorFlow and finds the others: Ctrl-C ends it at once,
    and so does a wait longer than `seconds`, each with one line.

    Until every worker has joined, TensorFlow blocks the main thread in C++ without
    letting go of Python's lock, so no Python code of this process runs: not a signal
    handler, not a thread. So Ctrl-C gets its default action (the process ends at once,
    130), and a small process started before TensorFlow starts watches (cluster_watch.py;
    a process started, not forked, as Windows has no fork): when this one ends before the
    cluster has formed, or takes too long, it says so. (SIGTERM cannot be given the same:
    TensorFlow's cluster setup installs a SIGTERM handler of its own, its preemption
    notifier, which keeps the worker waiting; the wait's bound ends it.)
    """
    if worker.count == 1:
        yield
        return
    addresses = cluster_addresses(tf_config)
    print(others_line(worker, addresses, seconds), flush=True)
    print(exposure_line(worker, addresses), flush=True)
    sys.stderr.flush()
    watcher = subprocess.Popen(
        [sys.executable, "-I", CLUSTER_WATCH, str(os.getpid()), str(seconds), str(worker.index),
         str(worker.count)], stdin=subprocess.PIPE, stderr=terminal_of(sys.stderr))
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        watcher.stdin.write(b"formed")
        watcher.stdin.close()
        watcher.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def terminal_of(stream):
    """Where a process started now should write its errors: `stream`'s own file (the
    terminal's, while TensorFlow's log is held back from descriptor 2), or else descriptor 2."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # a stream in memory, as a test captures it
        return None


def worker_lost_errors(worker):
    """What TensorFlow raises on a worker whose peers died or stopped answering (nothing
    to catch for a worker alone)."""
    if worker.count == 1:
        return ()
    return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError)


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


def finished_line(worker, model):
    """What a worker says when training ends, with the digest that every worker shares."""
    return (f"worker {worker.index} of {worker.count}{' (chief)' if worker.chief else ''} finished: "
            f"weights {weights_fingerprint(model)}")


def weights_fingerprint(model):
    """A short digest of the model's weights: the same on every worker of a run."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:16]


def steps_graph(model, strategy, slots, replica_step):
    """`replica_step(model, images, labels, counted, batch_size) -> (mean loss, correct)`, one
    optimizer step on one replica's part of a batch, made into one graph on `strategy`:
    `call(batches, stop=False, rows=0)` trains on up to `slots` batches, a list of (images,
    labels), one after another -> (each step's mean loss, each step's correct answers, stop
    requests), each summed over all replicas. `stop` says whether this process was asked to
    stop; `rows`, the size to pad a smaller batch to. Made once per model, strategy and
    `slots`.

    The batch is split between the strategy's replicas (CPU cores, GPUs or workers). On a
    CPU this is what keeps every core busy: an LSTM is a chain of small steps, each
    waiting for the one before, so one batch keeps one core busy; a replica per core runs
    a chain per core. Several steps in one call are Keras's `steps_per_execution`: the
    Python work of a call is paid once for them all, and the steps follow one another
    without a gap (bench/README.md). The steps are the same, one at a time or many (tested).
    """
    strategy = strategy or tf.distribute.get_strategy()
    return traced_once(model, ("train", id(strategy), slots),
                       lambda: build_steps_graph(model, strategy, slots, replica_step))


def build_steps_graph(model, strategy, slots, replica_step):
    total = tf.distribute.ReduceOp.SUM

    def this_replicas_step(images, labels, counted, batch_size, step):  # its part of this step's batch
        return replica_step(model, images[step], labels[step], counted[step], batch_size)

    def all_replicas_steps(images, labels, counted, batch_sizes, count, stop):
        # the stop requests added up first: passed into the loop below instead, TensorFlow
        # 2.21 returned empty tensors for all the outputs
        stops = strategy.reduce(total, strategy.run(tf.identity, args=(stop,)), axis=None)

        def one_step(step, losses, corrects):
            results = strategy.run(this_replicas_step, args=(images, labels, counted, batch_sizes[step], step))
            loss, correct = (strategy.reduce(total, result, axis=None) for result in results)
            return step + 1, losses.write(step, loss), corrects.write(step, correct)

        # a loop in the graph, as Keras's fit makes for steps_per_execution; written out, not
        # made by AutoGraph, whose conversion of the step made the first call slower
        _, losses, corrects = tf.while_loop(lambda step, *_: step < count, one_step, (
            tf.constant(0), tf.TensorArray(tf.float32, count), tf.TensorArray(tf.int32, count)))
        return losses.stack(), corrects.stack(), stops

    if strategy.num_replicas_in_sync == 1:  # plain tensors: a signature saves a retrace and time
        graph = tf.function(all_replicas_steps, autograph=False, input_signature=[
            tf.TensorSpec((slots, *input_spec(model).shape), tf.float32), tf.TensorSpec((slots, None), tf.int32),
            tf.TensorSpec((slots, None), tf.float32), tf.TensorSpec((slots,), tf.float32),
            tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32)])
    else:  # each replica's part: a tensor per replica, which a signature cannot name. (Cut
        # from the whole batch inside the graph instead, the first step was slower.)
        graph = tf.function(all_replicas_steps, autograph=False, reduce_retracing=True)
    return lambda batches, stop=False, rows=0: call_steps_graph(
        graph, strategy, slots, batches, stop, rows)


def call_steps_graph(graph, strategy, slots, batches, stop, rows):
    if not 1 <= len(batches) <= slots:
        raise ValueError(f"{len(batches)} batches for a graph of 1 to {slots} steps")
    replicas = strategy.num_replicas_in_sync
    # Every batch padded with blank images that count for nothing, to `rows` (an epoch's
    # last, smaller batch: the same shapes as the others, so the graph is not traced
    # again) and to a row per replica at least (Keras's LSTM takes no empty batch); and
    # as many batches as the graph has slots, blank ones unused.
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
