"""Training on tf.distribute: replicas on one machine, workers on 127.0.0.1, and the choices
made for a machine with a GPU. Every worker is a real process on a free local port."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import rnn_mnist
from plumbing import distribute, lazy_tensorflow
from conftest import REPO, as_command, synthetic_mnist

ONE_STEP = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import rnn_mnist
from plumbing import distribute, lazy_tensorflow
lazy_tensorflow.quiet_tensorflow(False)
tf, keras = lazy_tensorflow.tf, lazy_tensorflow.keras
strategy = distribute.make_strategy("mirrored", 2)  # 2 logical CPU devices, set before TF runs
rng = np.random.default_rng(0)
results = {}
for n in (16, 15):  # an odd batch splits 8 + 7
    images = rng.random((n, 28, 28), np.float32)
    labels = rng.integers(0, 10, n).astype(np.int32)
    weights = {}
    for name, where in (("one device", tf.distribute.get_strategy()), ("two replicas", strategy)):
        with where.scope():
            keras.utils.set_random_seed(5)
            model = rnn_mnist.make_model((28, 28), units=16)
            rnn_mnist.compile_model(model, 0.01, 100)
            model.optimizer.build(model.trainable_variables)
        (loss,), (correct,), _ = rnn_mnist.training_step(model, where)([(images, labels)])
        weights[name] = [w.tolist() for w in model.get_weights()]
        results[f"{name} {n} loss"] = float(loss)
    results[f"replicas {strategy.num_replicas_in_sync}"] = True
    results[f"batch {n}"] = max(float(np.max(np.abs(np.array(a) - np.array(b))))
                                for a, b in zip(weights["one device"], weights["two replicas"]))
print(json.dumps(results))
"""


@pytest.mark.full
def test_one_step_on_two_replicas_moves_the_weights_as_one_device_does():
    done = subprocess.run([sys.executable, "-c", ONE_STEP, REPO], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert results["replicas 2"]
    for n in (16, 15):
        # Adam's first step moves each weight by about the rate, 0.01; the two differ by
        # float rounding only (the sums are added in another order)
        assert results[f"batch {n}"] < 1e-5, results
        assert results[f"one device {n} loss"] == pytest.approx(results[f"two replicas {n} loss"], abs=1e-6)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def private_network():
    """The command prefix that runs a process in a network namespace of its own, with only
    loopback, shared by the workers of a test: TensorFlow's workers listen on every address
    of the machine, so here they listen where nothing outside can reach them. Where a
    namespace cannot be made (not root, or no `unshare`), the prefix is empty and the workers
    run on this machine's 127.0.0.1, as a user would run them by hand."""
    try:
        holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 3600"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError:
        yield []
        return
    time.sleep(0.5)
    if holder.poll() is not None:  # not allowed here
        yield []
        return
    try:
        yield ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]
    finally:
        holder.kill()
        holder.wait()


def start_workers(argv, cwd, tmp, ports, network, indices=None):
    """One process per worker, each told its place by TF_CONFIG; temporary files go to `tmp`;
    `indices`: which of the workers to start (default: all)."""
    workers = [f"127.0.0.1:{port}" for port in ports]
    processes = []
    for index in range(len(workers)) if indices is None else indices:
        env = dict(os.environ, TMPDIR=str(tmp), TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen([*network, sys.executable, os.path.join(REPO, "rnn_mnist.py"),
                                           *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    return processes


def finish(processes, timeout=300):
    """[(exit status, stdout, stderr)] of each process; none is left running."""
    try:
        return [(p.wait(timeout=timeout), *p.communicate()) for p in processes]
    finally:
        for p in processes:
            p.kill()


def fingerprint(out):
    lines = [line for line in out.splitlines() if " finished: weights " in line]
    assert len(lines) == 1, out
    return lines[0].rsplit(" ", 1)[1]


@pytest.mark.full
def test_two_workers_train_a_slice_of_mnist_to_the_end(tmp_path, real_mnist, private_network):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    argv = ["--data", real_mnist, "--max-train-samples", "1200", "--validation-size", "200",
            "--epochs", "2", "--units", "16", "--batch-size", "64", "--logdir", "runs"]
    (chief, chief_out, chief_err), (other, other_out, other_err) = finish(
        start_workers(argv, tmp_path, tmp, free_ports(2), private_network))
    assert (chief, other) == (0, 0), chief_err + other_err
    assert fingerprint(chief_out) == fingerprint(other_out)  # the same weights on both
    assert "(chief)" in chief_out and "test accuracy" in chief_out and "test accuracy" not in other_out
    assert "worker 1 of 2: training; worker 0, the chief, shows the progress\n" in other_out
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1  # one run folder, named by the chief
    run = tmp_path / "runs" / runs[0]
    assert {"checkpoints", "config.json", "metrics.json", "model.keras", "train",
            "validation"} <= set(os.listdir(run))
    config = json.loads((run / "config.json").read_text())
    assert (config["strategy"], config["workers"], config["replicas"]) == ("multi-worker", 2, 2)
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert os.listdir(tmp) == []  # no worker's temporary checkpoints left behind


@pytest.mark.full
def test_a_killed_worker_stops_the_other_and_resume_finishes_the_run(tmp_path, private_network):
    data = tmp_path / "digits.npz"
    np.savez(data, **synthetic_mnist(n_train=2040, n_test=60))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ports = free_ports(2)
    argv = ["--data", str(data), "--batch-size", "8", "--epochs", "6", "--units", "8",
            "--validation-size", "40", "--checkpoint-every", "20", "--logdir", "runs",
            "--run-name", "shared", "--quiet"]
    chief, other = start_workers(argv, tmp_path, tmp, ports, private_network)
    try:
        deadline = time.monotonic() + 240
        while not os.path.exists(tmp_path / "runs" / "shared" / "checkpoints" / "checkpoint"):
            assert chief.poll() is None and time.monotonic() < deadline, chief.stderr.read()
            time.sleep(0.05)
        time.sleep(1)
        other.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        status = chief.wait(timeout=WORKER_STOP_SECONDS)
        stopped_after = time.monotonic() - killed_at
        err = chief.stderr.read()
    finally:
        chief.kill()
        other.kill()
    assert status == 1 and stopped_after < WORKER_STOP_SECONDS
    assert re.match(r"rnn_mnist.py: error: worker 0 of 2 lost the others at (epoch \d+, step \d+|"
                    r"the end of epoch \d+) ", err) and err.count("\n") == 1, err
    assert "start every worker again with --resume" in err

    resumed = finish(start_workers(["--resume", "--logdir", "runs"], tmp_path, tmp, ports, private_network))
    assert [status for status, _, _ in resumed] == [0, 0], resumed
    waiting, exposed, resuming = resumed[0][1].splitlines()[:3]
    assert waiting == f"worker 0 of 2: waiting for worker 1 at 127.0.0.1:{ports[1]} to join (at most 300 s: --worker-wait)"
    assert exposed.startswith(f"worker 0 of 2: TensorFlow listens on port {ports[0]} of every address")
    assert resuming.startswith("resuming run shared at ")
    assert fingerprint(resumed[0][1]) == fingerprint(resumed[1][1])
    assert json.loads((tmp_path / "runs" / "shared" / "metrics.json").read_text())["epochs"] == 6
    assert not [name for name in os.listdir(tmp) if name.startswith("rnn_mnist-")]


WORKER_STOP_SECONDS = 60  # a lost worker is noticed at the next all-reduce: well within this


@pytest.mark.full
def test_ctrl_c_on_one_worker_stops_every_worker_at_the_same_step(tmp_path, private_network):
    data = tmp_path / "digits.npz"
    np.savez(data, **synthetic_mnist(n_train=2040, n_test=60))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    argv = ["--data", str(data), "--batch-size", "8", "--epochs", "6", "--units", "8",
            "--validation-size", "40", "--checkpoint-every", "1000", "--logdir", "runs",
            "--run-name", "stopped", "--quiet"]
    chief, other = start_workers(argv, tmp_path, tmp, free_ports(2), private_network)
    try:
        deadline = time.monotonic() + 240
        while not os.path.exists(tmp_path / "runs" / "stopped" / "checkpoints" / "checkpoint"):
            assert chief.poll() is None and time.monotonic() < deadline, chief.stderr.read()
            time.sleep(0.05)  # the first checkpoint: the end of epoch 1
        other.send_signal(signal.SIGINT)
        (chief_status, _, chief_err), (other_status, _, other_err) = finish([chief, other], 120)
    finally:
        chief.kill()
        other.kill()
    assert other_status == 128 + signal.SIGINT and other_err.startswith("SIGINT received: stopped at ")
    assert chief_status != 0 and chief_err.startswith("another worker stopped: stopped at ")
    # the same place in both messages, and a checkpoint of it in the run folder
    assert chief_err.split(": stopped at ")[1].split(";")[0] == other_err.split(": stopped at ")[1].split(";")[0]
    index = (tmp_path / "runs" / "stopped" / "checkpoints" / "checkpoint").read_text()
    assert "ckpt-250" not in index.splitlines()[0]  # a checkpoint newer than the epoch's end
    assert not [name for name in os.listdir(tmp) if name.startswith("rnn_mnist-")]


def lone_worker(tmp_path, network, *flags):
    """Worker 0 of two, started alone (worker 1 forgotten); (process, its ports, first line)."""
    data = tmp_path / "digits.npz"
    np.savez(data, **synthetic_mnist())
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ports = free_ports(2)
    argv = ["--data", str(data), "--epochs", "1", "--units", "8", "--batch-size", "32",
            "--validation-size", "40", "--logdir", "runs", *flags]
    process, = start_workers(argv, tmp_path, tmp, ports, network, indices=[0])
    return process, ports, process.stdout.readline()


@pytest.mark.full
def test_a_lone_worker_says_whom_it_waits_for_and_ctrl_c_ends_it(tmp_path, private_network):
    signum = signal.SIGINT
    process, ports, said = lone_worker(tmp_path, private_network)
    try:
        assert said == f"worker 0 of 2: waiting for worker 1 at 127.0.0.1:{ports[1]} to join " \
                       "(at most 300 s: --worker-wait)\n"
        time.sleep(8)  # TensorFlow started, and blocked waiting for worker 1
        assert process.poll() is None
        process.send_signal(signum)
        status = process.wait(timeout=WORKER_STOP_SECONDS)
        err = process.stderr.read()
    finally:
        process.kill()
    assert status == -signum  # ended by the signal itself: a shell says 128 + signum
    assert err == "rnn_mnist.py: worker 0 of 2 stopped (Ctrl-C, SIGTERM or a crash) while it waited " \
                  "for the others to join; nothing was trained or saved\n"


@pytest.mark.full
def test_a_lone_worker_gives_up_after_worker_wait(tmp_path, private_network):
    process, ports, said = lone_worker(tmp_path, private_network, "--worker-wait", "5")
    try:
        assert "(at most 5 s: --worker-wait)" in said
        status = process.wait(timeout=WORKER_STOP_SECONDS)
        err = process.stderr.read()
    finally:
        process.kill()
    assert status == -signal.SIGKILL  # ended by its watcher: TensorFlow holds the main thread
    assert err == "rnn_mnist.py: error: worker 0 of 2 waited 5 s for the others and gives up: start " \
                  "every worker, each with its TF_CONFIG, within --worker-wait of one another\n"
    assert not (tmp_path / "runs").exists() or os.listdir(tmp_path / "runs") == []


BAD_TF_CONFIG = [
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG names no cluster of workers"),
    ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 2}}',
     "TF_CONFIG's task index 2 is out of range: its cluster has 2 worker(s), numbered 0 to 1"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}',
     "TF_CONFIG's task type 'ps' is not a role of its cluster"),
    ('{"cluster": {"worker": [7]}, "task": {"type": "worker", "index": 0}}',
     "not \"host:port\" addresses"),
]


@pytest.mark.parametrize("tf_config,message", BAD_TF_CONFIG,
                         ids=["not-json", "no-cluster", "index-out-of-range", "bad-role", "bad-address"])
def test_a_bad_tf_config_gets_one_line_and_exit_2(tmp_path, tiny_npz, capsys, monkeypatch,
                                                  tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(SystemExit) as exit_:
        as_command(["--data", tiny_npz, "--logdir", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists() or os.listdir(tmp_path / "runs") == []


def test_multi_worker_without_tf_config_is_refused(tmp_path, tiny_npz, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(SystemExit):
        as_command(["--data", tiny_npz, "--logdir", str(tmp_path), "--distribute", "multi-worker"])
    assert "--distribute multi-worker needs the cluster in TF_CONFIG" in capsys.readouterr().err


def test_on_a_gpu_the_lstm_can_use_cudnn_and_the_cpu_thread_settings_stay_off(
        tmp_path, tiny_npz, monkeypatch):
    """No GPU here: the machine is made to report one, and what the run then chooses is checked."""
    import keras
    import tensorflow as tf
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: (
        [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")] if kind == "GPU" else real(kind)))
    threads_set = []
    monkeypatch.setattr(distribute, "configure_tensorflow", lambda *a: threads_set.append(a))
    rnn_mnist.main(["--data", tiny_npz, "--epochs", "1", "--batch-size", "32", "--units", "8",
                    "--validation-size", "40", "--logdir", str(tmp_path), "--run-name", "gpu", "--quiet"])
    assert threads_set == []
    lstm = keras.models.load_model(tmp_path / "gpu" / "model.keras").layers[1].get_config()
    # Keras's conditions for the cuDNN kernel
    assert (lstm["unroll"], lstm["activation"], lstm["recurrent_activation"]) == (False, "tanh", "sigmoid")
    assert lstm["recurrent_dropout"] == 0 and lstm["use_bias"]


@pytest.mark.full
def test_a_broken_off_run_is_resumed_only_where_a_checkpoint_was_saved(tmp_path, tiny_npz):
    """What a worker that lost the others tells the user: --resume, or (no checkpoint yet) to
    start again, since a resume would find nothing to resume from."""
    from plumbing import runs
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert runs.how_to_go_on(str(fresh)) == f"no checkpoint was saved yet: remove {fresh} and start every worker again"
    rnn_mnist.main(["--data", tiny_npz, "--epochs", "1", "--batch-size", "32", "--units", "8",
                    "--validation-size", "40", "--logdir", str(tmp_path), "--run-name", "saved", "--quiet"])
    assert runs.how_to_go_on(str(tmp_path / "saved")) == (
        f"start every worker again with --resume to go on from the last checkpoint in {tmp_path / 'saved'}")
