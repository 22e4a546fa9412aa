"""rnn_mnist's speed, measured: training throughput, time to accuracy, memory, prediction.

    python bench/benchmark.py --data ../shared/data/mnist.npz
    python bench/benchmark.py --data ../shared/data/mnist.npz --throughput-only
    python bench/benchmark.py --data ../shared/data/mnist.npz --throughput-only --slices 1
    python bench/benchmark.py --data ../shared/data/mnist.npz \
        --torch-python ../torch-venv/bin/python --torch-peer ../shared/bench/torch_peer.py

Prints one JSON object. Training runs the default settings of `rnn_mnist.py`
(or those its training flags, given after the benchmark's own, change)
through its own training loop, one epoch at a time, and tests after each epoch
(only here, to time the accuracy: a real run tests once, at the end). With
--torch-python, the PyTorch peer trains the same model at the same batch size
right after, in the same sitting, and the ratio of the two throughputs is given.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rnn_mnist  # noqa: E402  (the repo root is put on the path above)

tf, keras = (rnn_mnist.import_tensorflow()[name] for name in ("tf", "keras"))
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
    settings = rnn_mnist.build_parser().parse_args(["--data", data, "--quiet", "--figures-every", "0",
                                                   *flags])
    settings.run_name = "benchmark"
    if epochs:
        settings.epochs = epochs
    return settings


def prepared(settings, strategy):
    x_train, y_train, x_test, y_test = rnn_mnist.load_mnist(settings.data)
    with strategy.scope():
        model, train_data, val_data = rnn_mnist.prepare_training(settings, x_train, y_train)
    return model, train_data, val_data, (rnn_mnist.as_sequences(x_test), y_test)


def throughput(settings, strategy, warmup=30, timed=300):
    """Training samples/s of the real training step, after warm-up (all replicas together)."""
    model, (x, y), _, _ = prepared(settings, strategy)
    step = rnn_mnist.training_step(model, strategy)
    batches = rnn_mnist.prefetched(rnn_mnist.epoch_batches(x, y, settings.batch_size, settings.seed,
                                                           0, settings.shift))
    for _, (images, labels) in zip(range(warmup), batches):
        step(images, labels)
    started, seen = time.perf_counter(), 0
    for _, (images, labels) in zip(range(timed), batches):
        loss, *_ = step(images, labels)
        seen += len(labels)
    assert np.isfinite(float(loss))
    return seen / (time.perf_counter() - started)


def time_to_accuracy(settings, strategy, worker):
    """Train with the default settings, testing after each epoch; training seconds per epoch."""
    model, train_data, val_data, (x_test, y_test) = prepared(settings, strategy)
    state = rnn_mnist.training_state(model)
    curve, reached = [], {}
    with tempfile.TemporaryDirectory() as run_dir:
        summaries = rnn_mnist.SummaryBuffer(run_dir)
        target_epochs = settings.epochs
        for epoch in range(1, target_epochs + 1):
            settings.epochs = epoch
            rnn_mnist.train(state, train_data, val_data, settings, run_dir, summaries, quiet=True,
                            strategy=strategy, worker=worker)
            accuracy = rnn_mnist.evaluate(model, x_test, y_test)["accuracy"]
            seconds = float(state.train_seconds.numpy())
            curve.append({"epoch": epoch, "train_seconds": round(seconds, 1),
                          "test_accuracy": accuracy})
            for target in TARGETS:
                if accuracy >= target and target not in reached:
                    reached[target] = {"epoch": epoch, "train_seconds": round(seconds, 1)}
        summaries.close()
        settings.epochs = target_epochs
    started = time.perf_counter()
    rnn_mnist.predict(model, x_test)
    predict_rate = len(x_test) / (time.perf_counter() - started)
    return curve, reached, predict_rate


def torch_peer(python, peer, data, batch_size, epochs):
    """Run the PyTorch peer's plain recipe; its JSON lines, as dicts."""
    result = subprocess.run([python, peer, data, "--recipe", "plain", "--epochs", str(epochs),
                             "--batch", str(batch_size)], capture_output=True, text=True, check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


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
    parser.add_argument("--torch-epochs", type=int, default=2, help="epochs of the PyTorch peer")
    args, flags = parser.parse_known_args(argv)  # the rest: rnn_mnist.py's own training flags

    settings = default_settings(args.data, args.epochs, flags)
    distribute, worker, on_cpu = rnn_mnist.placement(
        settings.distribute, len(tf.config.list_physical_devices("GPU")), os.environ.get("TF_CONFIG"))
    strategy = rnn_mnist.start_strategy(settings, distribute, on_cpu)
    report = {"tensorflow": tf.__version__, "keras": keras.__version__, "cpu": cpu_name(),
              "cores": os.cpu_count(), "flags": flags, "batch_size": settings.batch_size,
              "units": settings.units, "cell": settings.cell,
              "strategy": distribute, "replicas": strategy.num_replicas_in_sync,
              "samples_per_second": round(throughput(settings, strategy))}
    if args.torch_python:
        epochs = torch_peer(args.torch_python, args.torch_peer, args.data, settings.batch_size,
                            args.torch_epochs)
        report["torch_samples_per_second"] = epochs[-1]["samples_per_s"]
        report["ratio_to_torch"] = round(report["samples_per_second"] / epochs[-1]["samples_per_s"], 3)
    if not args.throughput_only:
        curve, reached, predict_rate = time_to_accuracy(settings, strategy, worker)
        report["seconds_to_accuracy"] = {f"{target:.2%}": reached.get(target) for target in TARGETS}
        report["accuracy_curve"] = curve
        report["predict_images_per_second"] = round(predict_rate)
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
