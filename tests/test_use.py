"""Using a trained model: evaluate, predict on pictures, export for serving."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import rnn_mnist
from plumbing import mnist_files, pictures
from conftest import REPO, as_command, drawn_digit, write_picture


def test_a_picture_is_brought_to_mnist_form():
    image = pictures.to_mnist_form(drawn_digit())
    assert image.shape == (28, 28) and image.dtype == np.uint8
    assert image.max() == 255 and image[0].max() == 0 and image[:, 0].max() == 0  # light ink, dark ground
    rows = np.nonzero(image.max(axis=1) > 64)[0]
    cols = np.nonzero(image.max(axis=0) > 64)[0]
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (19, 20, 21)  # longer side ~20 px
    weights = image.astype(float)
    centre = [(np.indices(image.shape)[axis] * weights).sum() / weights.sum() for axis in (0, 1)]
    assert abs(centre[0] - 13.5) <= 1 and abs(centre[1] - 13.5) <= 1  # centre of mass centred


def test_polarity_colour_and_transparency_give_the_same_digit():
    base = pictures.to_mnist_form(drawn_digit())
    white_on_black = pictures.to_mnist_form(255 - drawn_digit(paper=(250, 250, 250), ink=(20, 20, 20)))
    gray = pictures.to_mnist_form(drawn_digit()[..., :1])
    rgba = np.concatenate([drawn_digit(), np.full((160, 120, 1), 255, np.uint8)], axis=-1)
    rgba[..., 3][rgba[..., 0] > 128] = 0  # transparent paper
    for other in (white_on_black, gray, pictures.to_mnist_form(rgba)):
        assert np.abs(other.astype(int) - base.astype(int)).mean() < 8


@pytest.mark.parametrize("shape, size", [((100, 80), (20, 16)), ((7, 5), (20, 14)), ((301, 33), (20, 2)),
                                         ((3, 200), (1, 20)), ((19, 23), (17, 20)), ((20, 20), (20, 20))])
def test_a_digit_is_scaled_as_tensorflows_antialiased_resize_scales_it(shape, size):
    import tensorflow as tf
    image = (np.random.default_rng(sum(shape)).random(shape) * 255).astype(np.float32)
    theirs = tf.image.resize(image[..., None], size, antialias=True).numpy()[..., 0]
    np.testing.assert_allclose(pictures.resized(image, size), theirs, atol=1e-3)  # of 255


def test_a_blank_picture_has_no_digit():
    assert pictures.to_mnist_form(np.full((50, 50, 3), 255, np.uint8)) is None


def test_predict_prints_a_digit_per_picture_and_json(tmp_path, trained, capsys):
    paths = []
    for name in ("a.png", "b.jpg"):
        write_picture(tmp_path / name, drawn_digit())
        paths.append(str(tmp_path / name))
    records = rnn_mnist.main(["predict", *paths, "--model", trained["model"], "--json",
                              "--show-input", str(tmp_path / "seen")])
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == records
    assert err == model_line(trained["model"], picked=False) + "\n"  # beside the JSON, not in it
    for record in records:
        assert 0 <= record["digit"] <= 9
        assert record["probability"] == pytest.approx(max(record["probabilities"]), abs=1e-6)
        assert sum(record["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    import tensorflow as tf
    seen = tf.io.decode_png(tf.io.read_file(str(tmp_path / "seen" / "a-28x28.png"))).numpy()
    np.testing.assert_array_equal(seen[..., 0], pictures.to_mnist_form(drawn_digit()))

    rnn_mnist.main(["predict", paths[0], "--model", trained["model"]])
    said, line = capsys.readouterr().out.strip().splitlines()
    assert said == model_line(trained["model"], picked=False)
    assert line.startswith(f"{paths[0]}: {records[0]['digit']}  (") and "then" in line


def model_line(path, picked):
    """What a command says of the model it uses: the run and its test accuracy."""
    run = os.path.dirname(path)
    accuracy = json.load(open(os.path.join(run, "metrics.json")))["test_accuracy"]
    which = "the newest model in --logdir" if picked else "model"
    return f"using {which}: {path} (run {os.path.basename(run)}, test accuracy {accuracy:.2%})"


def test_predict_and_export_say_which_model_they_picked(tmp_path, trained, capsys):
    write_picture(tmp_path / "a.png", drawn_digit())
    records = rnn_mnist.main(["predict", str(tmp_path / "a.png"), "--logdir", trained["logdir"]])
    assert len(records) == 1
    newest = os.path.join(trained["logdir"], "r", "model.keras")
    assert capsys.readouterr().out.splitlines()[0] == model_line(newest, picked=True)
    rnn_mnist.main(["export", "--logdir", trained["logdir"], "--out", str(tmp_path / "exported")])
    assert capsys.readouterr().out.splitlines()[0] == model_line(newest, picked=True)


@pytest.mark.parametrize("content,message", [
    (b"", "is not a PNG, JPEG, BMP or GIF image"),
    (b"GIF89a but not really", "is not a PNG, JPEG, BMP or GIF image"),
])
def test_predict_refuses_what_is_not_a_picture(tmp_path, trained, capsys, content, message):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        as_command(["predict", str(tmp_path / "x.png"), "--model", trained["model"]])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_predict_refuses_a_blank_picture_and_an_existing_output(tmp_path, trained, capsys):
    write_picture(tmp_path / "blank.png", np.full((40, 40, 3), 255, np.uint8))
    with pytest.raises(SystemExit):
        as_command(["predict", str(tmp_path / "blank.png"), "--model", trained["model"]])
    assert "is blank: no digit to read" in capsys.readouterr().err
    write_picture(tmp_path / "a.png", drawn_digit())
    (tmp_path / "seen").mkdir()
    (tmp_path / "seen" / "a-28x28.png").write_bytes(b"kept")
    with pytest.raises(SystemExit):
        as_command(["predict", str(tmp_path / "a.png"), "--model", trained["model"],
                        "--show-input", str(tmp_path / "seen")])
    assert "give --show-input an empty folder" in capsys.readouterr().err
    assert (tmp_path / "seen" / "a-28x28.png").read_bytes() == b"kept"


def test_models_that_cannot_be_used_are_refused(tmp_path, capsys):
    import keras
    with zipfile.ZipFile(tmp_path / "junk.keras", "w") as junk:  # a whole archive, but no model
        junk.writestr("notes.txt", "not a model at all")
    other = keras.Sequential([keras.Input((10,)), keras.layers.Dense(3)])
    other.save(tmp_path / "other.keras")
    for path, message in [(tmp_path / "missing.keras", "does not exist"),
                          (tmp_path / "junk.keras", "is not a Keras model this tool can load"),
                          (tmp_path / "other.keras", "not MNIST rows")]:
        with pytest.raises(SystemExit) as exit_:
            as_command(["evaluate", "--model", str(path)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    with pytest.raises(SystemExit):
        as_command(["export", "--logdir", str(tmp_path / "empty")])
    assert "no trained model in" in capsys.readouterr().err


def test_evaluate_reports_accuracy_per_class_and_confusion(trained, capsys):
    results = rnn_mnist.main(["evaluate", "--model", trained["model"], "--data", trained["data"],
                              "--batch-size", "16"])
    out = capsys.readouterr().out
    counts = np.array(results["confusion_matrix"])
    assert counts.shape == (10, 10) and counts.sum() == results["images"] == 60
    assert results["accuracy"] == pytest.approx(np.trace(counts) / 60)
    metrics = json.loads(open(os.path.join(os.path.dirname(trained["model"]), "metrics.json")).read())
    assert results["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert results["loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    assert f"test accuracy {results['accuracy']:.2%}" in out
    assert "confusion matrix" in out and "precision" in out


FRESH_PROCESS = """
import sys, numpy as np, tensorflow as tf
images = np.load(sys.argv[2])
served = tf.saved_model.load(sys.argv[1]).signatures["serving_default"](images=tf.constant(images))
np.save(sys.argv[3], served["probabilities"].numpy())
lite = tf.lite.Interpreter(model_path=sys.argv[1] + "/model.tflite")
lite.resize_tensor_input(lite.get_input_details()[0]["index"], images.shape)
lite.allocate_tensors()
lite.set_tensor(lite.get_input_details()[0]["index"], images)
lite.invoke()
np.save(sys.argv[4], lite.get_tensor(lite.get_output_details()[0]["index"]))
"""


@pytest.mark.full
def test_export_serves_what_the_keras_model_computes(tmp_path, trained, capsys):
    import keras
    out = tmp_path / "served"
    rnn_mnist.main(["export", "--model", trained["model"], "--out", str(out), "--tflite"])
    assert "serving_default" in capsys.readouterr().out
    images = np.load(trained["data"])["x_test"][:7]
    np.save(tmp_path / "images.npy", images)
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out), str(tmp_path / "images.npy"),
                    str(tmp_path / "served.npy"), str(tmp_path / "lite.npy")], check=True,
                   capture_output=True, timeout=300)
    expected = np.asarray(keras.models.load_model(trained["model"])(mnist_files.as_sequences(images)))
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), expected, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "lite.npy"), expected, atol=1e-5)

    with pytest.raises(SystemExit):  # never over an earlier export
        as_command(["export", "--model", trained["model"], "--out", str(out)])
    assert "exists already; give --out a new folder" in capsys.readouterr().err


def test_bmp_gif_and_gray_alpha_pictures_are_read_like_png(tmp_path, trained):
    from PIL import Image  # tests/requirements.txt
    picture = drawn_digit()
    write_picture(tmp_path / "digit.png", picture)
    Image.fromarray(picture).save(tmp_path / "digit.bmp")
    Image.fromarray(picture).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "digit.gif")
    gray = Image.fromarray(picture).convert("L")
    alpha = Image.fromarray(np.where(np.asarray(gray) > 128, 0, 255).astype(np.uint8))
    Image.merge("LA", (gray, alpha)).save(tmp_path / "digit-la.png")
    reference = pictures.to_mnist_form(pictures.read_picture(str(tmp_path / "digit.png")))
    names = ["digit.bmp", "digit.gif", "digit-la.png"]
    for name in names:
        image = pictures.to_mnist_form(pictures.read_picture(str(tmp_path / name)))
        assert np.abs(image.astype(int) - reference.astype(int)).mean() < 8, name
    records = rnn_mnist.main(["predict", str(tmp_path / "digit.png"),
                              *[str(tmp_path / n) for n in names], "--model", trained["model"], "--json"])
    assert len({r["digit"] for r in records}) == 1


def test_output_read_only_in_part_ends_quietly(trained):
    """`evaluate | head -1`: the reader leaves early; no traceback follows."""
    evaluate = subprocess.Popen([sys.executable, os.path.join(REPO, "rnn_mnist.py"), "evaluate",
                                 "--model", trained["model"], "--data", trained["data"]],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = evaluate.stdout.readline()
    evaluate.stdout.close()  # as head does after its line
    err = evaluate.stderr.read().decode()
    assert evaluate.wait(timeout=120) == 1
    assert first.startswith(b"using model: ") and err == ""


def test_model_may_be_a_run_folder(trained, tmp_path, capsys):
    write_picture(tmp_path / "a.png", drawn_digit())
    by_folder, = rnn_mnist.main(["predict", str(tmp_path / "a.png"), "--json",
                                 "--model", os.path.dirname(trained["model"])])
    by_file, = rnn_mnist.main(["predict", str(tmp_path / "a.png"), "--json", "--model", trained["model"]])
    assert by_folder == by_file
    with pytest.raises(SystemExit) as exit_:
        as_command(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == f"rnn_mnist.py: error: --model {tmp_path} is a folder that holds no model.keras; " \
                  "give a run folder that does, or the model.keras of a run"
