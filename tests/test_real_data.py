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
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    saved = json.loads((tmp_path / "slice" / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    assert saved["best_val_accuracy"] == max(epoch["val_accuracy"] for epoch in saved["history"])


def test_idx_files_made_from_the_real_data_read_back_identical(tmp_path, real_mnist):
    with np.load(real_mnist) as npz:
        arrays = {key: npz[key] for key in rnn_mnist.NPZ_KEYS}
    folder = write_idx_folder(str(tmp_path / "idx"), arrays, gz=True)
    loaded = rnn_mnist.load_mnist(folder)
    for key, array in zip(rnn_mnist.NPZ_KEYS, loaded):
        assert array.dtype == np.uint8
        np.testing.assert_array_equal(array, arrays[key])
    assert len(os.listdir(folder)) == 4


def as_user_picture(digit, path, rng):
    """An MNIST digit as someone would photograph it: black on white, bigger, RGB, off-centre, JPEG."""
    import tensorflow as tf
    big = tf.image.resize(digit[..., None].astype(np.float32), (84, 84)).numpy()[..., 0]
    canvas = np.full((200, 150), 255.0, np.float32)
    top, left = rng.integers(5, 200 - 84 - 5), rng.integers(5, 150 - 84 - 5)
    canvas[top:top + 84, left:left + 84] = 255 - np.clip(big, 0, 255)
    rgb = np.repeat(canvas[..., None], 3, axis=-1) * np.array([1.0, 0.97, 0.92], np.float32)
    tf.io.write_file(path, tf.io.encode_jpeg(np.round(rgb).astype(np.uint8), quality=85))


def test_predict_reads_test_digits_drawn_as_user_pictures(tmp_path, real_mnist, capsys):
    rnn_mnist.main(["--data", real_mnist, "--max-train-samples", "20000", "--validation-size", "2000",
                    "--epochs", "3", "--units", "64", "--learning-rate", "5e-3",
                    "--logdir", str(tmp_path / "runs"), "--run-name", "real", "--quiet"])
    model = str(tmp_path / "runs" / "real" / "model.keras")
    with np.load(real_mnist) as npz:
        digits, labels = npz["x_test"][:200], npz["y_test"][:200]
    rng = np.random.default_rng(0)
    pictures = []
    for i, digit in enumerate(digits):
        pictures.append(str(tmp_path / f"digit{i:03d}.jpg"))
        as_user_picture(digit, pictures[-1], rng)
    records = rnn_mnist.main(["predict", *pictures, "--model", model, "--json"])
    capsys.readouterr()
    rate = np.mean([r["digit"] == label for r, label in zip(records, labels)])
    direct = rnn_mnist.main(["evaluate", "--model", model, "--data", real_mnist, "--json"])
    print(f"predict named {rate:.1%} of 200 user-style pictures; the model scores "
          f"{direct['accuracy']:.1%} on the test set as it is")
    assert rate >= 0.9 and rate >= direct["accuracy"] - 0.05, (rate, direct["accuracy"])
