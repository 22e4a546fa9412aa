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
from conftest import REPO, as_command, one_quick, synthetic_mnist

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
        as_command(argv)
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


@pytest.mark.parametrize("spoil", one_quick(list(SPOILS), list(SPOILS)))
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


@pytest.mark.parametrize("listing", one_quick(["", "garbage ~~ {\n"], ["empty", "garbage"], quick=1))
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


@pytest.mark.parametrize("leave_kib", one_quick(
    [0, 16, 96, 160, 240], ["at-once", "config-only", "at-the-graph", "after-a-checkpoint",
                            "after-two-checkpoints"], quick=3))
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


@pytest.mark.parametrize("signum", one_quick([signal.SIGTERM, signal.SIGINT], ["sigterm", "ctrl-c"]))
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
    with monkeypatch.context() as patched:
        signal_during(patched, rnn_mnist, "load_mnist", signal.SIGTERM)
        status, out, err = resumed(["--data", str(finished / "tiny.npz"), "--logdir", str(tmp_path / "runs")],
                                   capsys)
    assert status == 128 + signal.SIGTERM
    assert err.strip() == "SIGTERM received: stopped before the run began; nothing was saved"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where", one_quick(["test", "validation"], ["test", "validation"]))
def test_a_signal_after_the_last_checkpoint_leaves_a_run_whose_test_resume_finishes(
        finished, tmp_path, capsys, monkeypatch, where):
    argv = ["--data", str(finished / "tiny.npz"), "--epochs", "2", "--logdir", str(tmp_path),
            "--run-name", "late", "--quiet", *TINY]
    with monkeypatch.context() as patched:
        if where == "test":  # while the best model is tested
            signal_during(patched, rnn_mnist, "test_and_record", signal.SIGTERM)
        else:  # while the last epoch is validated: the loop stops once it is saved
            validate = rnn_mnist.Training.validate

            def late_validate(self, record):
                if int(self.hooks.state.epoch.numpy()) == 1:  # the second epoch's
                    signal.raise_signal(signal.SIGTERM)
                return validate(self, record)
            patched.setattr(rnn_mnist.Training, "validate", late_validate)
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


@pytest.mark.full
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


# ----------------------------------------------------------------------------
# One process to a run folder; run names

@pytest.mark.full
def test_a_run_folder_in_use_by_another_process_is_refused(finished, tmp_path, capsys):
    slow = tmp_path / "slow.npz"
    import numpy as np
    np.savez(slow, **synthetic_mnist(n_train=4040, n_test=60))
    logdir = tmp_path / "runs"
    argv = ["--data", str(slow), "--epochs", "1", "--batch-size", "8", "--checkpoint-every", "20",
            "--validation-size", "40", "--units", "8", "--figures-every", "0", "--logdir", str(logdir)]
    first = subprocess.Popen([sys.executable, os.path.join(REPO, "rnn_mnist.py"), *argv, "--run-name", "busy"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (logdir / "busy" / "checkpoints" / "checkpoint").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for again in (["--resume", "busy"], ["--run-name", "busy"]):
            status, out, err = resumed([*argv, *again], capsys)
            assert status == 2 and len(err.splitlines()) == 1, err
            assert err.startswith("rnn_mnist.py: error: run busy is in use by another rnn_mnist process")\
                or "already holds a run; choose another --run-name, or go on with that one with " \
                   "--resume busy" in err
        assert first.poll() is None  # undisturbed
    finally:
        first.kill()
        first.wait()
    status, out, err = resumed(["--resume", "busy", "--logdir", str(logdir), "--quiet"], capsys)
    assert status == 0, err  # a killed process leaves no lock behind
    assert json.load(open(logdir / "busy" / "metrics.json"))["epochs"] == 1


def test_a_second_resume_of_a_running_run_is_refused_by_the_lock(run_copy, capsys):
    import fcntl
    run_dir, argv = run_copy
    held = os.open(run_dir, os.O_RDONLY)  # as the process that trains it holds it
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        before = sha256s(run_dir)
        status, out, err = resumed(argv, capsys)
    finally:
        os.close(held)
    assert status == 2 and err == ("rnn_mnist.py: error: run r is in use by another rnn_mnist process that "
                                   "trains or resumes it; wait for it to end\n")  # a resume: no other name
    assert sha256s(run_dir) == before


def test_runs_started_in_the_same_second_get_names_of_their_own(tmp_path):
    from plumbing import runs
    import argparse
    stamp = "20261201-120000"
    (tmp_path / stamp).mkdir()
    (tmp_path / stamp / "config.json").write_text("{}")
    assert runs.dated_name(str(tmp_path), stamp) == f"{stamp}-2"
    # another run takes the name between the choice and the making of the folder
    settings = argparse.Namespace(logdir=str(tmp_path), run_name=f"{stamp}-2")
    (tmp_path / f"{stamp}-2").mkdir()
    settings, run_dir = runs.made_run_folder(settings, str(tmp_path / f"{stamp}-2"), named=False)
    assert settings.run_name == f"{stamp}-3" and run_dir == str(tmp_path / f"{stamp}-3")
    assert os.path.isdir(run_dir)


@pytest.mark.full
def test_two_runs_at_once_without_a_name_each_get_a_folder(finished, tmp_path):
    argv = [sys.executable, os.path.join(REPO, "rnn_mnist.py"), "--data", str(finished / "tiny.npz"),
            "--epochs", "1", "--logdir", str(tmp_path / "runs"), "--quiet", *TINY]
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    names = sorted(os.listdir(tmp_path / "runs"))
    assert len(names) == 3
    for name in names:
        config = json.load(open(tmp_path / "runs" / name / "config.json"))
        assert config["run_name"] == name and (tmp_path / "runs" / name / "metrics.json").exists()


# ----------------------------------------------------------------------------
# Folders that cannot be written, odd names and locales, durable writes

def immutable(path, on):
    """chattr +i: not even root may change the folder (root passes every permission bit)."""
    done = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)
    if on and done.returncode:
        pytest.skip(f"chattr cannot make {path} read-only here: {done.stderr.decode().strip()}")


@pytest.mark.parametrize("folder", ["checkpoints", "."], ids=["checkpoints", "run-folder"])
def test_a_read_only_run_folder_is_refused_before_training(run_copy, capsys, folder):
    run_dir, argv = run_copy
    target = run_dir / folder
    before = sha256s(run_dir)
    immutable(target, True)
    try:
        status, out, err = resumed(argv, capsys)
    finally:
        immutable(target, False)
    assert status == 1 and out == "", err
    assert err == (f"rnn_mnist.py: error: cannot write to {os.path.normpath(target)} (Operation not "
                   "permitted); make it writable, then resume\n")
    assert sha256s(run_dir) == before


def test_a_run_name_with_spaces_is_quoted_in_the_command_to_resume(finished, tmp_path, capsys, monkeypatch):
    argv = ["--data", str(finished / "tiny.npz"), "--epochs", "2", "--logdir", str(tmp_path / "my runs"),
            "--run-name", "my run 2", "--quiet", *TINY]
    with monkeypatch.context() as patched:
        signal_during(patched, rnn_mnist, "test_and_record", signal.SIGTERM)
        status, out, err = resumed(argv, capsys)
    command = err.splitlines()[-1].split(": ", 1)[1]
    assert command == f"python rnn_mnist.py --resume 'my run 2' --logdir '{tmp_path / 'my runs'}'"
    status, out, err = resumed(shlex.split(command)[2:], capsys)  # as pasted into a shell
    assert status == 0, err


@pytest.mark.full
def test_a_non_ascii_run_name_works_and_a_locale_that_cannot_pass_it_on_is_named(finished, tmp_path):
    argv = [sys.executable, os.path.join(REPO, "rnn_mnist.py"), "--data", str(finished / "tiny.npz"),
            "--epochs", "1", "--logdir", str(tmp_path), "--quiet", *TINY, "--run-name", "déjà vu"]
    ascii_locale = dict(os.environ, LC_ALL="POSIX", PYTHONUTF8="0")
    done = subprocess.run(argv, env=ascii_locale, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "--run-name: has characters this system's locale (ascii) cannot pass on" in done.stderr
    assert not os.listdir(tmp_path)
    done = subprocess.run(argv, env=dict(os.environ, PYTHONUTF8="1"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "déjà vu" / "metrics.json").exists()


def test_a_run_name_too_long_for_a_folder_is_named(capsys):
    status, out, err = resumed(["--run-name", "r" * 300], capsys)
    assert status == 2 and "--run-name: is 300 bytes long, and a folder's name can be at most 255" in err


def test_the_model_and_the_metrics_reach_the_disk_before_their_names(finished, tmp_path, capsys, monkeypatch):
    from plumbing import atomic
    run_dir = tmp_path / "d"
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: events.append(("fsync", os.readlink(
        f"/proc/self/fd/{fd}"))) or fsync(fd))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: events.append(("replace", str(b))) or replace(a, b))
    status, out, err = resumed(["--data", str(finished / "tiny.npz"), "--epochs", "1", "--logdir",
                                str(tmp_path), "--run-name", "d", "--quiet", *TINY], capsys)
    assert status == 0, err
    for name, partial in (("config.json", "config.json.part"), ("metrics.json", "metrics.json.part"),
                          ("model.keras", "model.partial.keras")):  # the first epoch is the best so far
        i = events.index(("replace", str(run_dir / name)))
        assert events[i - 1] == ("fsync", str(run_dir / partial))  # the data, then the name,
        assert events[i + 1] == ("fsync", str(run_dir))  # then the folder that holds the name
