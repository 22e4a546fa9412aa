"""A few runs on a slice of the real MNIST (skipped, with the reason, when the file is absent)."""
import json
import os

import numpy as np

import rnn_mnist
from conftest import write_idx_folder


def test_a_short_run_on_real_digits_learns_them(tmp_path, real_mnist):
    metrics = rnn_mnist.main(["--data", real_mnist, "--max-train-samples", "6000",
                              "--validation-size", "1000", "--epochs", "3", "--units", "64",
                              "--learning-rate", "5e-3", "--logdir", str(tmp_path),
                              "--run-name", "slice", "--quiet"])
    # 5,000 training images, three epochs: far from 99% (80% when written), far above chance
    assert metrics["test_images"] == 10_000
    assert metrics["test_accuracy"] > 0.7, metrics
    assert metrics["history"]["loss"][-1] < metrics["history"]["loss"][0]
    saved = json.loads((tmp_path / "slice" / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    assert saved["best_val_accuracy"] == max(saved["history"]["val_accuracy"])


def test_idx_files_made_from_the_real_data_read_back_identical(tmp_path, real_mnist):
    with np.load(real_mnist) as npz:
        arrays = {key: npz[key] for key in rnn_mnist.NPZ_KEYS}
    folder = write_idx_folder(str(tmp_path / "idx"), arrays, gz=True)
    loaded = rnn_mnist.load_mnist(folder)
    for key, array in zip(rnn_mnist.NPZ_KEYS, loaded):
        assert array.dtype == np.uint8
        np.testing.assert_array_equal(array, arrays[key])
    assert len(os.listdir(folder)) == 4
