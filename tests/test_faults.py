"""Faults a run meets (damaged files, a full disk, a read-only folder, two processes, signals at
odd moments): each ends in one line and its exit status, and nothing already written is lost."""
import hashlib
import json
import os
import shutil

import pytest

import rnn_mnist
from conftest import synthetic_mnist

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
