"""Never lose training: checkpoints, signals, resume, and a loss that blows up."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import rnn_mnist
from plumbing import runs
from conftest import REPO, as_command, one_quick, synthetic_mnist

SMALL = ["--validation-size", "40", "--units", "8", "--quiet"]


def start(*argv, cwd):
    return subprocess.Popen([sys.executable, os.path.join(REPO, "rnn_mnist.py"), *argv], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def latest_checkpoint_step(run_dir):
    index = os.path.join(run_dir, "checkpoints", "checkpoint")
    try:
        with open(index) as f:
            first = f.readline()  # model_checkpoint_path: "ckpt-N"
    except OSError:
        return -1
    return int(first.split("ckpt-")[1].strip().strip('"')) if "ckpt-" in first else -1


def wait_for_checkpoint(run_dir, step, process, timeout=240):
    deadline = time.monotonic() + timeout
    while latest_checkpoint_step(run_dir) < step:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint came"
        time.sleep(0.01)


@pytest.fixture
def slow_npz(tmp_path):
    """Enough tiny images, in batches of 8, for an epoch to last about a second."""
    path = tmp_path / "slow.npz"
    np.savez(path, **synthetic_mnist(n_train=2040, n_test=60))
    return str(path)


@pytest.mark.full
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path, slow_npz, capsys, signum):
    logs = tmp_path / "logs"
    argv = ["--data", slow_npz, "--batch-size", "8", "--epochs", "2", "--checkpoint-every", "50",
            "--logdir", str(logs), "--run-name", "stopped", *SMALL[:-1]]  # with the progress bars
    process = start(*argv, cwd=tmp_path)
    wait_for_checkpoint(str(logs / "stopped"), 50, process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    assert f"resume with: python rnn_mnist.py --resume stopped --logdir {logs}" in err
    assert "Traceback" not in err
    # the bars were wiped (carriage returns, blanks, cursor moves) before the message
    on_its_line = err[:err.index(f"{signal.Signals(signum).name} received")].rsplit("\n", 1)[-1]
    assert re.fullmatch(r"(\r| |\x1b\[A)*", on_its_line), repr(on_its_line)
    stopped_at = latest_checkpoint_step(str(logs / "stopped"))
    assert 50 <= stopped_at < 2 * 250  # saved mid-run, after the last batch it finished

    metrics = rnn_mnist.main(["--resume", "stopped", "--logdir", str(logs), "--figures-every", "0"])
    epoch, step = divmod(stopped_at, 250)
    where = f"step {step + 1}/250 of epoch {epoch + 1}/2" if step else f"the start of epoch {epoch + 1}/2"
    assert capsys.readouterr().out.startswith(
        f"resuming run stopped at {where} (checkpoint ckpt-{stopped_at} in {logs / 'stopped'})\n")
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert latest_checkpoint_step(str(logs / "stopped")) == 2 * 250


@pytest.mark.full
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path, slow_npz):
    common = ["--data", slow_npz, "--batch-size", "8", "--epochs", "3", "--checkpoint-every", "10",
              "--deterministic", *SMALL]
    whole = start(*common, "--logdir", "logs", "--run-name", "whole", cwd=tmp_path)
    assert whole.wait(timeout=300) == 0, whole.communicate()

    killed = start(*common, "--logdir", "logs", "--run-name", "killed", cwd=tmp_path)
    wait_for_checkpoint(str(tmp_path / "logs" / "killed"), 300, killed)  # epoch 2 is steps 251-500
    killed.kill()
    killed.wait()
    step = latest_checkpoint_step(str(tmp_path / "logs" / "killed"))
    assert 250 < step < 500, step  # the kill came in the middle of the second epoch

    resumed = start("--resume", "killed", "--logdir", "logs", "--quiet", cwd=tmp_path)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err

    import keras
    runs = tmp_path / "logs"
    a = keras.models.load_model(runs / "whole" / "model.keras")
    b = keras.models.load_model(runs / "killed" / "model.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    ma, mb = (json.loads((runs / r / "metrics.json").read_text()) for r in ("whole", "killed"))
    assert ma["test_accuracy"] == mb["test_accuracy"] and ma["test_loss"] == mb["test_loss"]
    assert ma["best_epoch"] == mb["best_epoch"]


def tensorboard_steps(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(folder)
    events.Reload()
    return [event.step for event in events.Tensors(tag)]


@pytest.mark.full
def test_a_resumed_run_continues_epochs_schedule_and_logs(tmp_path, tiny_npz):
    logs = str(tmp_path)
    common = ["--data", tiny_npz, "--batch-size", "20", "--log-every", "5", "--logdir", logs,
              "--run-name", "more", *SMALL]
    first = rnn_mnist.main([*common, "--epochs", "2"])
    with pytest.raises(SystemExit) as exit_:  # finished: needs more epochs to go on
        as_command(["--resume", "--logdir", logs, "--quiet"])
    assert exit_.value.code == 2
    again = rnn_mnist.main(["--resume", "--logdir", logs, "--epochs", "4", "--quiet"])
    assert again["epochs"] == 4
    assert again["history"][:2] == first["history"]
    assert again["best_val_accuracy"] == max(r["val_accuracy"] for r in again["history"])
    config = json.loads((tmp_path / "more" / "config.json").read_text())
    assert config["epochs"] == 4 and config["batch_size"] == 20
    # one point per epoch and per 5 steps (10 steps an epoch), none repeated or rewound
    assert tensorboard_steps(str(tmp_path / "more" / "train"), "epochs/loss") == [1, 2, 3, 4]
    assert tensorboard_steps(str(tmp_path / "more" / "validation"), "epochs/accuracy") == [1, 2, 3, 4]
    assert tensorboard_steps(str(tmp_path / "more" / "train"), "steps/loss") == list(range(5, 41, 5))


@pytest.mark.full
def test_steps_per_execution_changes_how_fast_not_what_is_learned(tmp_path, tiny_npz):
    """A run trained 4 steps a call ends with the weights of one trained 1 step a call for an
    epoch, then resumed 7 steps a call: the calls are a matter of speed."""
    common = ["--data", tiny_npz, "--batch-size", "20", "--logdir", str(tmp_path), "--figures-every", "0",
              "--deterministic", "--lr-schedule", "constant", *SMALL]  # constant: 1 epoch or 2, the same
    rnn_mnist.main([*common, "--epochs", "2", "--run-name", "whole", "--steps-per-execution", "4"])
    rnn_mnist.main([*common, "--epochs", "1", "--run-name", "resumed", "--steps-per-execution", "1"])
    rnn_mnist.main(["--resume", "resumed", "--logdir", str(tmp_path), "--epochs", "2", "--quiet",
                    "--steps-per-execution", "7"])
    import keras
    whole, resumed = (keras.models.load_model(tmp_path / run / "model.keras") for run in ("whole", "resumed"))
    for w, v in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(v, w)
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["steps_per_execution"] == 7


RESUME_MISTAKES = [
    (["--units", "16"], "--units 16 would change the model of run r (8); start a new run"),
    (["--cell", "gru"], "--cell gru would change the model of run r (lstm)"),
    (["--batch-size", "10"], "--batch-size cannot change when resuming (run r used 20)"),
    (["--run-name", "r"], "give the run to resume as --resume NAME"),
]


@pytest.mark.parametrize("extra,message", one_quick(RESUME_MISTAKES, [a[0] for a, _ in RESUME_MISTAKES]))
def test_a_resume_that_would_change_the_run_is_refused(tmp_path, tiny_npz, capsys, extra, message):
    rnn_mnist.main(["--data", tiny_npz, "--batch-size", "20", "--epochs", "1", "--logdir",
                    str(tmp_path), "--run-name", "r", *SMALL])
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(SystemExit) as exit_:
        as_command(["--resume", "r", "--logdir", str(tmp_path), "--epochs", "2", *extra])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_resume_without_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        as_command(["--resume", "--logdir", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"no run to resume in {tmp_path}" in capsys.readouterr().err
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SystemExit):
        as_command(["--resume", "nothing", "--logdir", str(tmp_path)])
    assert "nothing holds no run to resume (no config.json)" in capsys.readouterr().err


def test_a_checkpoint_of_another_model_is_refused(tmp_path, tiny_npz, capsys):
    rnn_mnist.main(["--data", tiny_npz, "--epochs", "1", "--batch-size", "128", "--logdir", str(tmp_path),
                    "--run-name", "r", *SMALL])
    config_path = tmp_path / "r" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, units=32)))  # no longer the saved model
    with pytest.raises(SystemExit) as exit_:
        as_command(["--resume", "r", "--logdir", str(tmp_path), "--epochs", "2"])
    assert exit_.value.code == 2
    assert "does not fit the model its config.json describes" in capsys.readouterr().err


def test_a_loss_that_becomes_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_npz, capsys):
    # a learning rate of 1e38 overflows the weights within a few steps
    with pytest.raises(SystemExit) as exit_:
        as_command(["--data", tiny_npz, "--learning-rate", "1e38", "--lr-schedule", "constant",
                        "--batch-size", "20", "--checkpoint-every", "1", "--logdir", str(tmp_path),
                        "--run-name", "nan", *SMALL])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert re.search(r"the loss became (nan|inf|-inf) ", err), err
    assert "keeping the last good checkpoint" in err
    assert "Traceback" not in err
    checkpoints = str(tmp_path / "nan" / "checkpoints")
    import tensorflow as tf
    reader = tf.train.load_checkpoint(checkpoints)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


def stop_after(monkeypatch, global_step):
    """Ask the run to stop (as Ctrl-C does) once it has trained `global_step` steps."""
    requests = []
    enter, log_step = runs.StopRequest.__enter__, rnn_mnist.Training.log_step
    monkeypatch.setattr(runs.StopRequest, "__enter__", lambda self: requests.append(self) or enter(self))

    def log_and_ask(self, step, loss, accuracy):
        log_step(self, step, loss, accuracy)
        if step == global_step:
            requests[-1].signal = signal.SIGINT
    monkeypatch.setattr(rnn_mnist.Training, "log_step", log_and_ask)


@pytest.mark.parametrize("stopped_at, where", one_quick([
    (7, "the end of epoch 1/2 (its 7 steps done; its validation next)"),
    (8, "step 2/7 of epoch 2/2")], ["last-step-of-an-epoch", "first-step-of-an-epoch"]))
def test_a_run_stopped_at_an_epochs_edge_resumes_with_its_figures_right(tmp_path, tiny_npz, capsys,
                                                                        monkeypatch, stopped_at, where):
    argv = ["--data", tiny_npz, "--batch-size", "32", "--epochs", "2", "--logdir", str(tmp_path),
            "--run-name", "edge", "--validation-size", "40", "--units", "8", "--figures-every", "0",
            "--steps-per-execution", "1"]  # the stop is seen after the very step asked
    with monkeypatch.context() as patched:
        stop_after(patched, stopped_at)  # 200 training images in batches of 32: 7 steps an epoch
        with pytest.raises(SystemExit) as stop:
            as_command(argv)
    assert stop.value.code == 128 + signal.SIGINT
    assert latest_checkpoint_step(str(tmp_path / "edge")) == stopped_at
    capsys.readouterr()
    metrics = rnn_mnist.main(["--resume", "edge", "--logdir", str(tmp_path), "--figures-every", "0"])
    out = capsys.readouterr().out
    assert out.startswith(f"resuming run edge at {where} (checkpoint ckpt-{stopped_at} in "), out
    rates = [epoch["samples_per_second"] for epoch in metrics["history"]]
    assert len(rates) == 2 and all(rate > 0 for rate in rates), rates
    assert min(rates) > max(rates) / 20  # the stopped epoch's time and images both counted
    assert metrics["samples_per_second"] == pytest.approx(sum(rates) / 2)
    assert " 0 samples/s" not in out
    with open(tmp_path / "edge" / "metrics.json") as f:
        assert json.load(f)["history"] == metrics["history"]
