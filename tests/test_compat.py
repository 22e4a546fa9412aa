"""A run folder written by the single-file script of before the recipe moved its plumbing
into plumbing/ still resumes, evaluates, predicts, exports and serves."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rnn_mnist
from conftest import REPO, drawn_digit, synthetic_mnist, write_picture
from plumbing import server, using

SINGLE_FILE_SCRIPT = "438c408aaa28195da0cbae0a999be3a42ddf8b25"  # main before the move


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """One epoch of a two-epoch run trained by the old script: its folder and data."""
    folder = tmp_path_factory.mktemp("old")
    try:
        source = subprocess.run(["git", "-C", REPO, "show", f"{SINGLE_FILE_SCRIPT}:rnn_mnist.py"],
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"the repository's history (commit {SINGLE_FILE_SCRIPT[:7]}) is not at hand")
    (folder / "old_rnn_mnist.py").write_bytes(source)
    data = folder / "tiny.npz"
    np.savez(data, **synthetic_mnist())
    done = subprocess.run([sys.executable, str(folder / "old_rnn_mnist.py"), "--data", str(data),
                           "--epochs", "1", "--batch-size", "32", "--units", "8", "--validation-size",
                           "40", "--logdir", str(folder / "runs"), "--run-name", "old", "--quiet"],
                          cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return {"data": str(data), "logdir": str(folder / "runs"), "run": folder / "runs" / "old"}


@pytest.mark.full
def test_an_old_run_resumes_and_is_then_used_by_every_command(old_run, tmp_path, capsys):
    run, logdir, data = old_run["run"], old_run["logdir"], old_run["data"]
    metrics = rnn_mnist.main(["--resume", "old", "--logdir", logdir, "--epochs", "2", "--quiet"])
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2

    model = str(run / "model.keras")
    evaluated = rnn_mnist.main(["evaluate", "--model", model, "--data", data, "--json"])
    assert evaluated["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    write_picture(tmp_path / "seven.png", drawn_digit())
    record, = rnn_mnist.main(["predict", str(tmp_path / "seven.png"), "--model", model, "--json"])
    written = rnn_mnist.main(["export", "--model", model, "--out", str(tmp_path / "saved")])["written"]
    assert os.path.isfile(os.path.join(written[0], "saved_model.pb"))
    reader = server.Reader(*using.load_trained_model(model))
    answer = reader.answer((tmp_path / "seven.png").read_bytes())
    assert answer["digit"] == record["digit"]
    np.testing.assert_allclose(answer["probabilities"], record["probabilities"], atol=2e-4)
    capsys.readouterr()
