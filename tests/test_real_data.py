"""A few runs on a slice of the real MNIST (skipped, with the reason, when the file is absent)."""
import json
import os

import numpy as np
import pytest

import rnn_mnist
from plumbing import mnist_files
from conftest import write_idx_folder

pytestmark = pytest.mark.full  # the full tier: python -m pytest tests --full


def test_a_short_run_on_real_digits_learns_them(tmp_path, real_mnist):
    metrics = rnn_mnist.main(["--data", real_mnist, "--max-train-samples", "6000",
                              "--validation-size", "1000", "--epochs", "3", "--units", "64",
                              "--batch-size", "128", "--learning-rate", "5e-3", "--logdir", str(tmp_path),
                              "--run-name", "slice", "--quiet"])
    # 5,000 training images, three epochs: far from 99% (80% when written), far above chance
    assert metrics["test_images"] == 10_000
    assert metrics["test_accuracy"] > 0.7, metrics
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    saved = json.loads((tmp_path / "slice" / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    assert saved["best_val_accuracy"] == max(epoch["val_accuracy"] for epoch in saved["history"])


def test_idx_files_made_from_the_real_data_read_back_identical(tmp_path, real_mnist):
    with np.load(real_mnist) as npz:
        arrays = {key: npz[key] for key in mnist_files.NPZ_KEYS}
    folder = write_idx_folder(str(tmp_path / "idx"), arrays, gz=True)
    loaded = mnist_files.load_mnist(folder)
    for key, array in zip(mnist_files.NPZ_KEYS, loaded):
        assert array.dtype == np.uint8
        np.testing.assert_array_equal(array, arrays[key])
    assert len(os.listdir(folder)) == 4


def test_predict_reads_test_digits_drawn_as_user_pictures(real_model, user_pictures, real_mnist, capsys):
    model = real_model
    pictures, labels = user_pictures
    records = rnn_mnist.main(["predict", *pictures, "--model", model, "--json"])
    capsys.readouterr()
    rate = np.mean([r["digit"] == label for r, label in zip(records, labels)])
    direct = rnn_mnist.main(["evaluate", "--model", model, "--data", real_mnist, "--json"])
    print(f"predict named {rate:.1%} of 200 user-style pictures; the model scores "
          f"{direct['accuracy']:.1%} on the test set as it is")
    assert rate >= 0.9 and rate >= direct["accuracy"] - 0.05, (rate, direct["accuracy"])


def test_the_page_api_reads_user_pictures_as_often_as_predict(real_model, user_pictures, capsys):
    from test_serve import read, serve_in_thread
    pictures, labels = user_pictures
    records = rnn_mnist.main(["predict", *pictures, "--model", real_model, "--json"])
    capsys.readouterr()
    server, address = serve_in_thread(real_model)
    try:
        answers = []
        for picture in pictures:
            with open(picture, "rb") as f:
                status, answer = read(address, f.read())
            assert status == 200
            answers.append(answer["digit"])
    finally:
        server.shutdown()
        server.server_close()
    assert answers == [r["digit"] for r in records]  # the same reading, picture by picture
    rate = np.mean(np.array(answers) == labels)
    print(f"/api/read named {rate:.1%} of 200 user-style pictures")
    assert rate >= 0.9
