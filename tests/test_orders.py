"""Reading a digit in other orders: pixel by pixel, column by column, permuted, K pixels a
step; every use of such a model reads a picture the way it was trained."""
import json
import os
import shutil

import numpy as np
import pytest

import rnn_mnist
from plumbing import checkpoints, orders, reading, using
from conftest import as_command, drawn_digit, synthetic_mnist, write_picture
from test_serve import request, serve_in_thread


def test_each_order_is_every_pixel_once_as_the_help_says():
    rows, columns = rnn_mnist.pixel_order("rows"), rnn_mnist.pixel_order("columns")
    seeded, bitrev = rnn_mnist.pixel_order("permuted", "5"), rnn_mnist.pixel_order("permuted", "bitrev")
    for order in (rows, columns, seeded, bitrev):
        assert sorted(order.tolist()) == list(range(784))
    assert columns[:3].tolist() == [0, 28, 56] and columns[28] == 1  # down the first column first
    np.testing.assert_array_equal(seeded, np.random.default_rng(5).permutation(784))
    assert bitrev[:6].tolist() == [0, 512, 256, 768, 128, 640]  # 10 bits reversed
    assert 1023 - 512 not in bitrev[:300]  # 511 reversed is 1022: left out, not wrapped
    assert not np.array_equal(rnn_mnist.pixel_order("permuted", "0"), seeded)


def test_the_model_reads_its_pixels_in_its_order_k_a_step():
    """A permuted model is the plain LSTM on the permuted sequences: same weights, same answers."""
    order = rnn_mnist.pixel_order("permuted", "0")
    x = synthetic_mnist(n_train=6, n_test=1)["x_train"].astype(np.float32) / 255
    model = rnn_mnist.make_model((28, 28), units=8, reading=(order, 16))
    plain = rnn_mnist.make_model((49, 16), units=8)
    plain.set_weights(model.get_weights())
    sequences = x.reshape(6, 784)[:, order].reshape(6, 49, 16)
    np.testing.assert_allclose(orders.sequences_of(model, x), sequences)
    np.testing.assert_allclose(model(x), plain(sequences), rtol=1e-5, atol=1e-6)
    # the line between an unrolled graph and TensorFlow's loop
    assert reading.recurrent_layers(model)[0].unroll
    long = rnn_mnist.make_model((28, 28), units=8, reading=(order, 1))
    assert long.layers[1].output.shape[1:] == (784, 1) and not reading.recurrent_layers(long)[0].unroll
    # the default model is today's: no layer before the LSTM
    assert [type(layer).__name__ for layer in rnn_mnist.make_model((28, 28), units=8).layers] == [
        "InputLayer", "LSTM", "Dense"]


def test_the_trace_of_a_permuted_model_is_its_cell_and_shows_28_steps(trained_permuted):
    model = using.load_trained_model(trained_permuted["model"])[0]
    x = synthetic_mnist(n_train=3, n_test=1)["x_train"].astype(np.float32) / 255
    _, last = reading.unit_trace(model, x)
    head = rnn_mnist.keras.Model(model.inputs[0], reading.recurrent_layers(model)[-1].output)
    np.testing.assert_allclose(last, np.asarray(head(x)), atol=1e-5)
    seen = reading.how_it_reads(model, x)
    assert seen["steps"].tolist() == list(range(4, 113, 4))  # 112 steps: every 4th shown
    assert seen["readout"].shape == (3, 28, 10)
    np.testing.assert_allclose(seen["readout"][:, -1], np.asarray(model(x)), atol=1e-5)
    assert reading.shown_steps(7).tolist() == list(range(7))
    assert reading.shown_steps(784)[:2].tolist() == [27, 55]  # the end of each row's 28 pixels


@pytest.mark.full
def test_a_permuted_model_answers_alike_through_every_use(trained_permuted, tmp_path, capsys):
    """predict, the page's API, the SavedModel and the TFLite model read the same pictures the
    same way, because the reordering is the model's first layer."""
    import tensorflow as tf
    run = trained_permuted["run"]
    config = json.load(open(os.path.join(run, "config.json")))
    assert (config["order"], config["pixels_per_step"], config["permutation"], config["clip_norm"]) == (
        "permuted", 7, "3", 1.0)
    held = tf.train.load_checkpoint(checkpoints.newest_saved(os.path.join(run, "checkpoints")))
    assert held.get_tensor("state/reading/.ATTRIBUTES/VARIABLE_VALUE").decode().startswith("7 pixels a step")

    mnist = np.load(trained_permuted["data"])["x_test"][:3]
    paths = []
    for i, pixels in enumerate([*mnist[..., None], drawn_digit()]):
        paths.append(str(tmp_path / f"d{i}.png"))
        write_picture(paths[-1], np.asarray(pixels, np.uint8))
    capsys.readouterr()
    predicted = rnn_mnist.main(["predict", *paths, "--model", trained_permuted["model"], "--json",
                                "--show-input", str(tmp_path / "seen")])
    p_predict = np.array([r["probabilities"] for r in predicted])
    images = np.stack([tf.io.decode_png(tf.io.read_file(r["model_input"]))[..., 0].numpy()
                       for r in predicted])  # the 28x28 image each picture became

    server, address = serve_in_thread(trained_permuted["model"])
    try:
        answers = [json.loads(request(address, "POST", "/api/read", open(p, "rb").read())[2]) for p in paths]
        about = json.loads(request(address, "GET", "/api/model")[2])
    finally:
        server.shutdown()
        server.server_close()
    p_api = np.array([a["probabilities"] for a in answers])
    assert about["order"] == "permuted" and about["steps"] == 112
    assert about["pixel_order"] == rnn_mnist.pixel_order("permuted", "3").tolist()
    assert answers[0]["steps"] == list(range(4, 113, 4))

    out = tmp_path / "export"
    rnn_mnist.main(["export", "--model", trained_permuted["model"], "--out", str(out), "--tflite"])
    p_saved = tf.saved_model.load(str(out)).signatures["serving_default"](
        images=tf.constant(images))["probabilities"].numpy()
    interpreter = tf.lite.Interpreter(str(out / "model.tflite"))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    p_tflite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    for other in (p_api, p_saved, p_tflite):
        np.testing.assert_allclose(other, p_predict, atol=2e-4)  # the API rounds to 4 decimals
        assert (other.argmax(1) == p_predict.argmax(1)).all()


@pytest.mark.parametrize("argv,message", [
    (["--order", "rows"], "--order rows would change the model of run p (permuted); start a new run"),
    (["--permutation", "bitrev"], "--permutation bitrev would change the model of run p (3)"),
    (["--pixels-per-step", "28"], "--pixels-per-step 28 would change the model of run p (7)"),
    (["--clip-norm", "0"], "--clip-norm cannot change when resuming (run p used 1.0)"),
])
def test_a_resume_in_another_order_is_refused(trained_permuted, tmp_path, capsys, argv, message):
    logdir = tmp_path / "runs"
    shutil.copytree(trained_permuted["logdir"], logdir)
    before = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(logdir) for f in fs}
    with pytest.raises(SystemExit) as exit_:
        as_command(["--resume", "p", "--logdir", str(logdir), "--epochs", "2", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert before == {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(logdir) for f in fs}


def test_a_checkpoint_read_in_another_order_than_its_config_says_is_refused(trained_permuted, tmp_path, capsys):
    logdir = tmp_path / "runs"
    shutil.copytree(trained_permuted["logdir"], logdir)
    config_path = logdir / "p" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, permutation="4")))  # edited by hand
    with pytest.raises(SystemExit) as exit_:
        as_command(["--resume", "p", "--logdir", str(logdir), "--epochs", "2", "--quiet"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert "was trained reading 7 pixels a step, pixel order sha256:" in err and "start a new run" in err


def test_clipping_bounds_the_step_alike_on_one_replica_and_two():
    """--clip-norm C: the whole batch's gradient is cut to length C before the update, and
    that is the same step whether the batch is split between two replicas or not."""
    import keras
    import tensorflow as tf
    data = synthetic_mnist(n_train=32, n_test=1)
    x, y = data["x_train"].astype(np.float32) / 255, data["y_train"]
    moves = []
    for devices, clip in ((["CPU:0"], 0.0), (["CPU:0"], 0.01), (["CPU:0", "CPU:1"], 0.01)):
        strategy = tf.distribute.MirroredStrategy(devices, tf.distribute.ReductionToOneDevice())
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = rnn_mnist.make_model((28, 28), units=8)
            model.compile(optimizer=keras.optimizers.SGD(1.0), loss=keras.losses.SparseCategoricalCrossentropy())
            model.optimizer.build(model.trainable_variables)
        before = model.get_weights()
        rnn_mnist.training_step(model, strategy, clip_norm=clip)([(x, y)])
        moves.append([w - v for w, v in zip(model.get_weights(), before)])
    length = [np.sqrt(sum(float(np.sum(d ** 2)) for d in move)) for move in moves]
    assert length[0] > 0.05  # unclipped, the step is far longer than the limit
    assert length[1] == pytest.approx(0.01, rel=1e-3)  # SGD at rate 1: the step is the gradient
    for d1, d2 in zip(moves[1], moves[2]):
        np.testing.assert_allclose(d2, d1, atol=1e-7)
