"""Faults a run meets (damaged files, a full disk, a read-only folder, two processes, signals at
odd moments): each ends in one line and its exit status, and nothing already written is lost."""
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

import rnn_mnist
from conftest import REPO, synthetic_mnist

TINY = ["--batch-size", "32", "--validation-size", "40", "--units", "8", "--figures-every", "0",
        "--steps-per-execution", "1"]


def sha256s(folder):
    """Every file under `folder`, by its path relative to it, with its sha256."""
    return {os.path.relpath(os.path.join(root, name), folder):
            hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
            for root, _, names in os.walk(folder) for name in names}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny run of 2 epochs (7 steps each), checkpointed every 2 steps: ckpt-10, 12 and 14 kept."""
    folder = tmp_path_factory.mktemp("finished")
    import numpy as np
    np.savez(folder / "tiny.npz", **synthetic_mnist())
    rnn_mnist.main(["--data", str(folder / "tiny.npz"), "--epochs", "2", "--checkpoint-every", "2",
                    "--logdir", str(folder / "runs"), "--run-name", "r", "--quiet", *TINY])
    return folder


@pytest.fixture
def run_copy(finished, tmp_path):
    """A copy of the finished run to spoil, and the command that trains it a third epoch."""
    shutil.copytree(finished / "runs", tmp_path / "runs")
    return tmp_path / "runs" / "r", ["--resume", "r", "--epochs", "3", "--logdir", str(tmp_path / "runs")]


def resumed(argv, capsys):
    """Run `argv`: (its exit status, its stdout, its stderr)."""
    try:
        rnn_mnist.main(argv)
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


DATA, INDEX = "ckpt-14.data-00000-of-00001", "ckpt-14.index"
SPOILS = {
    "truncated": lambda c: os.truncate(c / DATA, os.path.getsize(c / DATA) // 2),
    "zeroed": lambda c: (c / DATA).write_bytes(bytes(os.path.getsize(c / DATA))),
    "random bytes": lambda c: (c / DATA).write_bytes(os.urandom(os.path.getsize(c / DATA))),
    "no index": lambda c: os.remove(c / INDEX),
    "garbled index": lambda c: (c / INDEX).write_bytes(os.urandom(64)),
    "no data": lambda c: os.remove(c / DATA),
}


@pytest.mark.parametrize("spoil", SPOILS, ids=list(SPOILS))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_goes_on_from_an_older(run_copy, capsys, spoil):
    run_dir, argv = run_copy
    SPOILS[spoil](run_dir / "checkpoints")
    damaged = {name: digest for name, digest in sha256s(run_dir / "checkpoints").items()
               if name.startswith("ckpt-14.")}
    status, out, err = resumed(argv, capsys)
    assert status == 0, err
    folder = run_dir / "checkpoints"
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"rnn_mnist.py: warning: the checkpoint ckpt-14 in {folder} is damaged (")
    assert err.rstrip().endswith(f"); it is moved into {folder}/damaged")
    assert "ckpt-12" in out.splitlines()[0] and out.startswith("resuming run r at ")
    assert {name: digest for name, digest in sha256s(run_dir / "checkpoints" / "damaged").items()} == damaged
    assert json.load(open(run_dir / "metrics.json"))["epochs"] == 3


@pytest.mark.parametrize("listing", ["", "garbage ~~ {\n"], ids=["empty", "garbage"])
def test_a_damaged_checkpoint_list_is_rebuilt_from_the_files(run_copy, capsys, listing):
    run_dir, argv = run_copy
    (run_dir / "checkpoints" / "checkpoint").write_text(listing)
    status, out, err = resumed(argv, capsys)
    assert (status, err) == (0, "")
    assert out.startswith(f"resuming run r at the start of epoch 3/3 (checkpoint ckpt-14 in {run_dir})")


def test_when_no_checkpoint_reads_the_run_starts_again_from_its_beginning(run_copy, capsys):
    run_dir, argv = run_copy
    for name in os.listdir(run_dir / "checkpoints"):
        if name.startswith("ckpt-") and ".data" in name:
            (run_dir / "checkpoints" / name).write_bytes(b"\0" * 40)
    status, out, err = resumed(argv, capsys)
    assert status == 0 and len(err.splitlines()) == 3, err  # one line for each of the three
    assert out.startswith("resuming run r from the start: it holds no checkpoint that reads")
    assert json.load(open(run_dir / "metrics.json"))["epochs"] == 3


CONFIGS = {"a list": "[]", "null": "null", "not JSON": "{\"cell\": ", "an empty object": "{}",
           "a wrong type": None}


@pytest.mark.parametrize("config", CONFIGS, ids=list(CONFIGS))
def test_a_damaged_config_json_is_named_in_one_line_and_nothing_is_touched(run_copy, capsys, config):
    run_dir, argv = run_copy
    text = CONFIGS[config]
    if text is None:
        recorded = json.load(open(run_dir / "config.json"))
        text = json.dumps(dict(recorded, batch_size="abc"))
    (run_dir / "config.json").write_text(text)
    before = sha256s(run_dir)
    status, out, err = resumed(argv, capsys)
    assert status == 1 and out == ""
    assert len(err.splitlines()) == 1 and f"{run_dir / 'config.json'}" in err, err
    assert "damaged" in err or "cannot read" in err
    assert err.rstrip().endswith("the run cannot be resumed: start a new run")
    assert sha256s(run_dir) == before


@pytest.mark.parametrize("size", [0, 3000], ids=["empty", "truncated"])
def test_a_damaged_model_keras_is_said_to_be_damaged(run_copy, capsys, size):
    run_dir, _ = run_copy
    model = run_dir / "model.keras"
    model.write_bytes(model.read_bytes()[:size])
    status, out, err = resumed(["evaluate", "--model", str(run_dir)], capsys)
    assert status == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"rnn_mnist.py: error: {model} is damaged ({size:,} bytes that are not a whole "
                          ".keras archive")


# ----------------------------------------------------------------------------
# A full disk: a small tmpfs, where the tests run as root (else these are skipped)

@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("a full disk is a small tmpfs, which only root can mount")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk, leave):
    """Take all of `disk` but `leave` bytes; returns the filler, to remove for more room."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(stats.f_bavail * stats.f_frsize - leave, 1))
    return filler


def no_partial_files(run_dir):
    left = [p for p in run_dir.rglob("*") if p.name.endswith("_temp") or ".partial" in p.name
            or (p.name.startswith("events.out") and p.stat().st_size == 0)]
    assert not left, left


@pytest.fixture(scope="module")
def whole_deterministic(finished):
    """The metrics of the full-disk runs' settings, trained without a fault."""
    return rnn_mnist.main(["--data", str(finished / "tiny.npz"), *FULL_DISK_RUN,
                           "--logdir", str(finished / "whole"), "--run-name", "w"])


FULL_DISK_RUN = ["--epochs", "2", "--checkpoint-every", "3", "--deterministic", "--quiet", *TINY]


@pytest.mark.parametrize("leave_kib", [0, 16, 96, 160, 240],
                         ids=["at-once", "config-only", "at-the-graph", "after-a-checkpoint",
                              "after-two-checkpoints"])
def test_a_full_disk_ends_in_one_line_and_the_run_goes_on_after_more_room(
        finished, small_disk, capsys, whole_deterministic, leave_kib):
    logdir = small_disk / "runs"
    argv = ["--data", str(finished / "tiny.npz"), *FULL_DISK_RUN, "--logdir", str(logdir), "--run-name", "r"]
    shutil.copytree(finished / "runs" / "r", logdir / "earlier")  # a run that must stay as it was
    earlier = sha256s(logdir / "earlier")
    filler = fill(small_disk, leave_kib * 1024)
    status, out, err = resumed(argv, capsys)
    run_dir = logdir / "r"
    lines = err.splitlines()
    assert status == 1 and len(lines) == 2, err
    assert lines[0].startswith(f"rnn_mnist.py: error: the disk of {run_dir} is full; ")
    assert lines[1].startswith("make room on it, then ")
    no_partial_files(run_dir)
    assert sha256s(logdir / "earlier") == earlier
    os.remove(filler)
    command = lines[1].split(" with: ", 1)[1] if " with: " in lines[1] else None
    then = argv if command is None else shlex.split(command)[2:] + ["--data", str(finished / "tiny.npz")]
    status, out, err = resumed(then, capsys)
    assert status == 0, err
    metrics = json.load(open(run_dir / "metrics.json"))
    assert [e["loss"] for e in metrics["history"]] == [e["loss"] for e in whole_deterministic["history"]]
    assert metrics["test_loss"] == whole_deterministic["test_loss"]


def test_a_resume_on_a_full_disk_changes_nothing(finished, small_disk, capsys):
    logdir = small_disk / "runs"
    shutil.copytree(finished / "runs" / "r", logdir / "r")
    os.remove(logdir / "r" / "metrics.json")  # its test left: the resume writes config.json first
    before = sha256s(logdir / "r")
    filler = fill(small_disk, 0)
    status, out, err = resumed(["--resume", "r", "--logdir", str(logdir)], capsys)
    assert status == 1 and len(err.splitlines()) == 2, err
    assert err.startswith(f"rnn_mnist.py: error: the disk of {logdir / 'r'} is full; its 2 epochs were "
                          f"trained and saved in {logdir / 'r'}, its test is left.\n"
                          f"make room on it, then test it with: python rnn_mnist.py --resume r --logdir ")
    assert sha256s(logdir / "r") == before
    os.remove(filler)
    status, out, err = resumed(["--resume", "r", "--logdir", str(logdir)], capsys)
    assert status == 0 and out.startswith("resuming run r at its test: its 2 epochs were trained")
    assert json.load(open(logdir / "r" / "metrics.json"))["epochs"] == 2


# ----------------------------------------------------------------------------
# Signals outside the training loop, and SIGKILL before the first checkpoint

def signal_during(monkeypatch, module, name, signum):
    """Send `signum` to this process as `module.name` begins, as a user's Ctrl-C or kill would."""
    original = getattr(module, name)

    def signalled(*args, **kwargs):
        signal.raise_signal(signum)  # to this thread: its handler runs before the next line
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, signalled)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_before_the_first_step_says_so_and_the_run_can_start_again(
        finished, tmp_path, capsys, monkeypatch, signum):
    argv = ["--data", str(finished / "tiny.npz"), "--epochs", "2", "--logdir", str(tmp_path),
            "--run-name", "early", "--quiet", *TINY]
    with monkeypatch.context() as patched:
        signal_during(patched, rnn_mnist.Training, "fit", signum)
        status, out, err = resumed(argv, capsys)
    name = signal.Signals(signum).name
    assert status == 128 + signum
    assert err.replace("stopped before its first step;", "stopped at once;") == (
                   f"{name} received: stopped at once; no checkpoint was saved yet in {tmp_path / 'early'}.\n"
                   f"start it again from the beginning with: python rnn_mnist.py --resume early "
                   f"--logdir {tmp_path}\n")
    status, out, err = resumed(["--resume", "early", "--logdir", str(tmp_path)], capsys)
    assert status == 0 and out.startswith("resuming run early from the start"), err
    assert json.load(open(tmp_path / "early" / "metrics.json"))["epochs"] == 2


def test_sigterm_before_the_run_folder_is_made_says_nothing_was_saved(finished, tmp_path, capsys, monkeypatch):
    from plumbing import mnist_files  # noqa: F401  (the data is loaded before the folder is made)
    with monkeypatch.context() as patched:
        signal_during(patched, rnn_mnist, "load_mnist", signal.SIGTERM)
        status, out, err = resumed(["--data", str(finished / "tiny.npz"), "--logdir", str(tmp_path / "runs")],
                                   capsys)
    assert status == 128 + signal.SIGTERM
    assert err.strip() == "SIGTERM received: stopped before the run began; nothing was saved"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where", ["test", "validation"])
def test_a_signal_after_the_last_checkpoint_leaves_a_run_whose_test_resume_finishes(
        finished, tmp_path, capsys, monkeypatch, where):
    argv = ["--data", str(finished / "tiny.npz"), "--epochs", "2", "--logdir", str(tmp_path),
            "--run-name", "late", "--quiet", *TINY]
    with monkeypatch.context() as patched:
        if where == "test":  # while the best model is tested
            signal_during(patched, rnn_mnist, "test_and_record", signal.SIGTERM)
        else:  # while the last epoch is validated: the loop stops once it is saved
            end_epoch = rnn_mnist.Training.end_epoch

            def late_end_epoch(self, epoch, record):
                if epoch == 2:
                    signal.raise_signal(signal.SIGTERM)
                return end_epoch(self, epoch, record)
            patched.setattr(rnn_mnist.Training, "end_epoch", late_end_epoch)
        status, out, err = resumed(argv, capsys)
    assert status == 128 + signal.SIGTERM
    lines = err.splitlines()
    assert len(lines) == 2 and "its test is left" in lines[0], err
    assert lines[1] == f"test it with: python rnn_mnist.py --resume late --logdir {tmp_path}"
    assert not (tmp_path / "late" / "metrics.json").exists()
    status, out, err = resumed(["--resume", "late", "--logdir", str(tmp_path)], capsys)
    assert status == 0 and out.startswith("resuming run late at its test: its 2 epochs were trained"), err
    metrics = json.load(open(tmp_path / "late" / "metrics.json"))
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2


def test_sigkill_before_the_first_checkpoint_leaves_a_run_that_resumes_from_its_start(finished, tmp_path):
    slow = tmp_path / "slow.npz"
    import numpy as np
    np.savez(slow, **synthetic_mnist(n_train=4040, n_test=60))
    argv = [sys.executable, os.path.join(REPO, "rnn_mnist.py"), "--data", str(slow), "--epochs", "1",
            "--batch-size", "8", "--checkpoint-every", "100000", "--validation-size", "40",
            "--units", "8", "--figures-every", "0", "--logdir", str(tmp_path / "runs"), "--run-name", "k"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = tmp_path / "runs" / "k" / "config.json"
    deadline = time.monotonic() + 120
    while not config.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # into the first epoch, long before its end (500 steps)
    process.kill()
    process.wait()
    assert not (tmp_path / "runs" / "k" / "checkpoints").exists() or \
        not any(p.name.endswith(".index") for p in (tmp_path / "runs" / "k" / "checkpoints").iterdir())
    done = subprocess.run([*argv[:2], "--resume", "k", "--logdir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("resuming run k from the start")
    assert json.load(open(tmp_path / "runs" / "k" / "metrics.json"))["epochs"] == 1
