"""rnn_mnist from Python: main([...]) raises what it would print, load_model takes a model of any
reading order, read answers one picture step by step, and the example in docs/using.md runs."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, synthetic_mnist

import rnn_mnist
from plumbing.mnist_files import as_sequences

THREE = os.path.join(REPO, "examples", "three.png")


def test_a_mistake_from_python_is_an_exception_the_caller_can_catch(tmp_path):
    with pytest.raises(rnn_mnist.UsageError) as missing:
        rnn_mnist.main(["--data", str(tmp_path / "nothere.npz")])
    assert missing.value.status == 2 and "nothere.npz" in str(missing.value)
    assert missing.value.line().startswith("rnn_mnist.py: error: ")
    with pytest.raises(rnn_mnist.Error) as misspelt:
        rnn_mnist.main(["--epoch", "3"])
    assert "did you mean --epochs?" in str(misspelt.value) and misspelt.value.status == 2
    with pytest.raises(rnn_mnist.UsageError, match="'evalute' is not a command; did you mean 'evaluate'"):
        rnn_mnist.main(["evalute"])


def test_a_trained_model_reads_a_picture_row_by_row(trained):
    model = rnn_mnist.load_model(logdir=trained["logdir"])  # the newest run in it
    answer = rnn_mnist.read(model, THREE)
    probabilities = np.asarray(answer["probabilities"])
    assert answer["readout"].shape == (28, 10) and list(answer["steps"]) == list(range(1, 29))
    assert np.allclose(answer["readout"][-1], probabilities) and np.isclose(probabilities.sum(), 1, atol=1e-5)
    assert answer["digit"] == int(probabilities.argmax())
    digit = np.load(trained["data"])["x_test"][0]  # MNIST's own form: uint8, white on black
    from_array = rnn_mnist.read(model, digit)
    assert np.allclose(from_array["probabilities"], model(as_sequences(digit[None]))[0], atol=1e-5)


def test_a_permuted_model_loads_by_its_folder_and_reads_as_it_was_trained(trained_permuted):
    model = rnn_mnist.load_model(trained_permuted["run"])
    digit = np.load(trained_permuted["data"])["x_test"][3]
    answer = rnn_mnist.read(model, digit)
    assert answer["readout"].shape == (28, 10) and answer["steps"][-1] == 112  # 28 of its 112 steps
    assert np.allclose(answer["probabilities"], model(as_sequences(digit[None]))[0], atol=1e-5)


def test_read_names_what_it_cannot_read(trained, tmp_path):
    model = rnn_mnist.load_model(trained["model"])
    with pytest.raises(rnn_mnist.UsageError, match=r"an image of shape \(28, 27\); give a picture's path"):
        rnn_mnist.read(model, np.zeros((28, 27), np.uint8))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    with pytest.raises(rnn_mnist.Error, match="notes.txt"):
        rnn_mnist.read(model, str(notes))


def docs_example():
    """The code of docs/using.md's section 'Use it from Python', as written there."""
    text = open(os.path.join(REPO, "docs", "using.md")).read()
    block = re.search(r"## Use it from Python\n\n((?:    .*\n|\n)+)", text).group(1)
    return "\n".join(line[4:] for line in block.splitlines())


@pytest.mark.full
def test_the_docs_python_example_runs_as_written_and_quietly(tmp_path):
    # Where the example expects them: ../shared/data/mnist.npz (here: synthetic digits, as many
    # training images as the default validation needs and a few batches more) and examples/.
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    np.savez(shared / "mnist.npz", **synthetic_mnist(n_train=5600, n_test=100))
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(os.path.join(REPO, "examples"), work / "examples")
    done = subprocess.run([sys.executable, "-c", docs_example()], cwd=work, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert 0 <= float(lines[-2]) <= 1  # the test accuracy
    digit, steps = lines[-1].split(" ", 1)
    assert digit in "0123456789" and len(steps.strip("[]").split()) == 28
    assert done.stderr == "", done.stderr  # no TensorFlow or absl lines on the terminal
    assert os.path.isfile(work / "Visualize" / os.listdir(work / "Visualize")[0] / "model.keras")
