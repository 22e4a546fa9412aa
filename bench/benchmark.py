"""rnn_mnist's speed, measured: time to a trained model, training throughput, memory, prediction.

    python bench/benchmark.py --data ../shared/data/mnist.npz --seeds 1 2 3 \
        --torch-python ../torch-venv/bin/python --torch-batch 128:0.005
    python bench/benchmark.py --data ../shared/data/mnist.npz --throughput-only
    python bench/benchmark.py --data ../shared/data/mnist.npz --throughput-only --distribute none

Prints one JSON object. Training runs the default settings of `rnn_mnist.py` (or
those its training flags, given after the benchmark's own, change) through its own
training loop, one epoch at a time, and tests after each epoch (only here, to time
the accuracy: a real run tests once, at the end), once per seed. The JSON names the
recipe it ran. With --torch-python, in the same sitting: the PyTorch peer's plain
recipe at the same batch size, for a ratio of throughputs, and its tuned recipe
(rnn_mnist's own, in PyTorch) with the same batch size, learning rate, epochs and
seeds, and with each other batch size and rate given by --torch-batch: seed after
seed, each of rnn_mnist's runs followed by the peer's with the same seed, so that the
machine's slow minutes fall on both alike.
"""

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rnn_mnist  # noqa: E402  (the repo root is put on the path above)
from plumbing import batches, checkpoints, cli, distribute, graphs, lazy_tensorflow, metrics, mnist_files, summaries  # noqa: E402

tf, keras = (lazy_tensorflow.import_tensorflow()[name] for name in ("tf", "keras"))
np = rnn_mnist.np
TARGETS = (0.9876, 0.99)  # the original project's accuracy, and ours


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_settings(data, epochs=None, flags=()):
    """rnn_mnist.py's training settings: its defaults, or changed by its own `flags`."""
    parser = cli.build_parser(rnn_mnist.RECIPE, rnn_mnist.RECURRENT_CELLS)
    settings = parser.parse_args(["--data", data, "--quiet", "--figures-every", "0", *flags])
    settings.run_name = "benchmark"
    if epochs:
        settings.epochs = epochs
    return settings


def prepared(settings, strategy, mnist):
    x_train, y_train, x_test, y_test = mnist
    with strategy.scope():
        model, train_data, val_data = rnn_mnist.prepare_training(settings, x_train, y_train)
    return model, train_data, val_data, (mnist_files.as_sequences(x_test), y_test)


def throughput(settings, strategy, mnist, warmup=30, timed=300):
    """(Training samples/s of the real training step, after warm-up (all replicas together),
    called as training calls it: `--steps-per-execution` steps at a time; the seconds of its
    first call, which builds the graph)."""
    model, (x, y), _, _ = prepared(settings, strategy, mnist)
    step = rnn_mnist.training_step(model, strategy, settings.steps_per_execution)
    chunks = batches.prefetched(batches.chunked(  # epoch after epoch, for as many steps as asked
        (batch for epoch in itertools.count()
         for batch in rnn_mnist.epoch_batches(x, y, settings.batch_size, settings.seed, epoch, settings.shift)),
        settings.steps_per_execution, settings.checkpoint_every))

    def train(steps):
        done = seen = 0
        while done < steps:
            chunk = next(chunks)
            losses, _, _ = step(chunk, rows=settings.batch_size)
            done, seen = done + len(chunk), seen + sum(len(labels) for _, labels in chunk)
        assert np.all(np.isfinite(losses))
        return seen

    started = time.perf_counter()
    train(1)  # the first call: the graph traced and built, then its steps
    first_call = time.perf_counter() - started
    train(warmup)
    started = time.perf_counter()
    seen = train(timed)
    return seen / (time.perf_counter() - started), first_call


def time_to_accuracy(settings, where, mnist):
    """Train with `settings`, testing after each epoch: (the epochs' training seconds and test
    accuracy, prediction images/s)."""
    model, train_data, val_data, (x_test, y_test) = prepared(settings, where.strategy, mnist)
    state = checkpoints.training_state(model)
    curve = []
    with tempfile.TemporaryDirectory() as run_dir:
        buffer = summaries.SummaryBuffer(run_dir)
        target_epochs = settings.epochs
        for epoch in range(1, target_epochs + 1):
            settings.epochs = epoch
            rnn_mnist.Training(state, (train_data, val_data), settings, run_dir, buffer, where).fit()
            accuracy = metrics.evaluate(model, x_test, y_test)["accuracy"]
            seconds = float(state.train_seconds.numpy())
            curve.append({"epoch": epoch, "train_seconds": round(seconds, 1),
                          "test_accuracy": accuracy})
        buffer.close()
        settings.epochs = target_epochs
    started = time.perf_counter()
    graphs.predict(model, x_test)
    predict_rate = len(x_test) / (time.perf_counter() - started)
    return curve, predict_rate


def recipe(settings, training_images):
    """What the time-to-accuracy runs train with, in words the PyTorch peer takes too."""
    schedule = {"cosine": "cosine to zero over all steps", "constant": "constant"}[settings.lr_schedule]
    return {"model": f"{settings.layers} x {settings.cell.upper()}({settings.units})",
            "training_images": training_images, "batch_size": settings.batch_size,
            "optimizer": "Adam", "learning_rate": settings.learning_rate,
            "lr_schedule": schedule, "epochs": settings.epochs, "shift_pixels": settings.shift}


def reached_first(curve):
    """{target: {epoch, train_seconds}} for each target the curve of epochs reaches."""
    reached = {}
    for point in curve:
        for target in TARGETS:
            if point["test_accuracy"] >= target and f"{target:.2%}" not in reached:
                reached[f"{target:.2%}"] = {"epoch": point["epoch"], "train_seconds": point["train_seconds"]}
    return reached


def medians(runs):
    """Median training seconds to each target over seeds; a seed that never reached it
    counts as slower than all, so the median is None when half of them missed."""
    result = {}
    for target in (f"{t:.2%}" for t in TARGETS):
        times = sorted(run["reached"][target]["train_seconds"] if target in run["reached"]
                       else float("inf") for run in runs)
        median = statistics.median(times)
        result[target] = None if median == float("inf") else median
    return result


def run_record(seed, curve, **more):
    """One time-to-accuracy run, rnn_mnist's or the peer's: when it reached each target, how
    it ended, its curve of epochs."""
    return {"seed": seed, **more, "reached": reached_first(curve),
            "final_test_accuracy": curve[-1]["test_accuracy"], "curve": curve}


def our_run(settings, where, mnist, seed):
    """One time-to-accuracy run of rnn_mnist with `seed`; prediction images/s after it."""
    settings.seed = seed
    curve, predict_rate = time_to_accuracy(settings, where, mnist)
    return run_record(seed, curve), predict_rate


def torch_peer(python, peer, data, *options):
    """Run the PyTorch peer; its JSON lines (one per epoch), as dicts."""
    result = subprocess.run([python, peer, data, *map(str, options)], capture_output=True, text=True,
                            check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def torch_run(args, settings, batch_size, learning_rate, seed):
    """The PyTorch peer on rnn_mnist's recipe (cosine to zero, shifts, the same images) at
    `batch_size` and `learning_rate`, with rnn_mnist's epochs and `seed`."""
    options = ["--recipe", "tuned", "--epochs", settings.epochs, "--batch", batch_size,
               "--lr", learning_rate, "--shift", settings.shift, "--seed", seed]
    if settings.clip_norm:
        options += ["--clip-norm", settings.clip_norm]
    epochs = torch_peer(args.torch_python, args.torch_peer, args.data, *options)
    curve = [{"epoch": e["epoch"], "train_seconds": e["train_s"], "test_accuracy": e["test_acc"]}
             for e in epochs]
    return run_record(seed, curve, peer_options=" ".join(map(str, options)),
                      samples_per_second=epochs[-1]["samples_per_s"])


def time_to_accuracy_sitting(args, settings, where, mnist, seeds):
    """rnn_mnist's runs and the PyTorch peer's (when asked), seed after seed, so that the
    machine's slow minutes fall on both alike: (our runs, the peer's per batch and rate,
    prediction images/s)."""
    # each (batch, rate) once, even when --torch-batch repeats rnn_mnist's own
    theirs = {recipe: [] for recipe in [(settings.batch_size, settings.learning_rate), *args.torch_batch]}
    ours, predict_rate = [], None
    for seed in seeds:
        run, predict_rate = our_run(settings, where, mnist, seed)
        ours.append(run)
        if args.torch_python:
            for batch_size, rate in theirs:
                theirs[batch_size, rate].append(torch_run(args, settings, batch_size, rate, seed))
    return ours, [{"batch_size": batch_size, "learning_rate": rate, "epochs": settings.epochs,
                   "median_seconds_to_accuracy": medians(runs), "runs": runs}
                  for (batch_size, rate), runs in theirs.items() if runs], predict_rate


def when_reached(run):
    """'epoch 5, 24.3 s' for each target, or 'not reached'."""
    return [f"epoch {run['reached'][t]['epoch']}, {run['reached'][t]['train_seconds']:.1f} s"
            if t in run["reached"] else "not reached" for t in (f"{t:.2%}" for t in TARGETS)]


def seed_table(report):
    """The sitting seed by seed, for a reader: when each engine first reached each target, how
    it ended, and the medians, the peer's with rnn_mnist's time as a fraction of theirs."""
    targets = [f"{t:.2%}" for t in TARGETS]
    ours = report["median_seconds_to_accuracy"]
    engines = [("rnn_mnist", report["runs"], ours)]
    engines += [(f"PyTorch, batch {peer['batch_size']}, {peer['learning_rate']}", peer["runs"],
                 peer["median_seconds_to_accuracy"]) for peer in report.get("torch_tuned", [])]
    rows = [["seed", "engine", *(f"{t} reached" for t in targets), "final"]]
    for i, run in enumerate(report["runs"]):
        for name, runs, _ in engines:
            rows.append([str(run["seed"]), name, *when_reached(runs[i]), f"{runs[i]['final_test_accuracy']:.2%}"])
    for name, _, median in engines:
        cells = []
        for t in targets:
            cell = "not reached" if median[t] is None else f"{median[t]:.1f} s"
            if name != "rnn_mnist" and median[t] and ours[t]:
                cell += f" (rnn_mnist {ours[t] / median[t]:.2f}x)"
            cells.append(cell)
        rows.append(["median", name, *cells, ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def batch_and_rate(text):
    try:
        batch, rate = text.split(":")
        return int(batch), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not BATCH:RATE, for example 256:0.004") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="a local mnist.npz")
    parser.add_argument("--epochs", type=int, help="epochs for the accuracy curve (default: "
                                                   "rnn_mnist.py's)")
    parser.add_argument("--throughput-only", action="store_true",
                        help="measure the training throughput only")
    parser.add_argument("--torch-python", help="a Python with torch, to run the PyTorch peer")
    parser.add_argument("--torch-peer", default=os.path.join("..", "shared", "bench", "torch_peer.py"),
                        help="the PyTorch peer script")
    parser.add_argument("--torch-epochs", type=int, default=2,
                        help="epochs of the PyTorch peer's plain recipe, for the throughput ratio")
    parser.add_argument("--torch-batch", type=batch_and_rate, nargs="*", default=[], metavar="BATCH:RATE",
                        help="more batch sizes (with their learning rates) for the PyTorch peer's "
                             "tuned recipe, besides rnn_mnist's own")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds of the time-to-accuracy runs "
                                                             "(default: rnn_mnist.py's)")
    args, flags = parser.parse_known_args(argv)  # the rest: rnn_mnist.py's own training flags

    settings = default_settings(args.data, args.epochs, flags)
    seeds = args.seeds or [settings.seed]
    tf_config = os.environ.get("TF_CONFIG")
    where = distribute.placed(settings, distribute.this_worker(settings.distribute, tf_config), tf_config)
    mnist = mnist_files.load_mnist(settings.data)  # once, for every run of the sitting
    training_images = len(mnist[0]) - settings.validation_size
    report = {"tensorflow": tf.__version__, "keras": keras.__version__, "cpu": cpu_name(),
              "flags": flags, "recipe": recipe(settings, training_images),
              **where.record()}
    samples_per_second, first_call = throughput(settings, where.strategy, mnist)
    report.update(samples_per_second=round(samples_per_second), first_call_seconds=round(first_call, 2))
    if args.torch_python:
        epochs = torch_peer(args.torch_python, args.torch_peer, args.data, "--recipe", "plain",
                            "--epochs", args.torch_epochs, "--batch", settings.batch_size)
        report["torch_plain_samples_per_second"] = epochs[-1]["samples_per_s"]
        report["ratio_to_torch_plain"] = round(report["samples_per_second"] / epochs[-1]["samples_per_s"], 3)
    if not args.throughput_only:
        our_runs, peer_runs, predict_rate = time_to_accuracy_sitting(args, settings, where, mnist, seeds)
        report["median_seconds_to_accuracy"] = medians(our_runs)
        report["runs"] = our_runs
        report["predict_images_per_second"] = round(predict_rate)
        if peer_runs:
            report["torch_tuned"] = peer_runs
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(report, indent=1))
    if "runs" in report:
        print(f"on {report['cpu']}:\n{seed_table(report)}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
