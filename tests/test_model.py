"""The network: its output, and that training lowers the loss."""
import numpy as np
import pytest

import rnn_mnist
from plumbing import batches, graphs, mnist_files, reading
from conftest import one_quick, synthetic_mnist


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("gru", 1), ("lstm", 2)])
def test_output_is_a_probability_per_class(cell, layers):
    model = rnn_mnist.make_model((mnist_files.TIMESTEPS, mnist_files.FEATURES), cell=cell,
                                 units=16, layers=layers)
    x = mnist_files.as_sequences(synthetic_mnist(n_train=5, n_test=1)["x_train"])
    p = np.asarray(model(x))
    assert p.shape == (5, mnist_files.NUM_CLASSES)
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    recurrent = [layer for layer in model.layers if layer.name.startswith(cell)]
    assert len(recurrent) == layers


def test_the_model_reads_the_rows_in_order():
    """The prediction depends on the order of the rows, so rows really are timesteps."""
    model = rnn_mnist.make_model((mnist_files.TIMESTEPS, mnist_files.FEATURES), units=16)
    x = mnist_files.as_sequences(synthetic_mnist(n_train=4, n_test=1)["x_train"])
    assert not np.allclose(np.asarray(model(x)), np.asarray(model(x[:, ::-1])))


def test_one_training_step_lowers_the_loss():
    import keras
    keras.utils.set_random_seed(0)
    data = synthetic_mnist(n_train=64, n_test=1)
    x, y = mnist_files.as_sequences(data["x_train"]), data["y_train"]
    model = rnn_mnist.make_model(x.shape[1:], units=16)
    rnn_mnist.compile_model(model, learning_rate=1e-2, total_steps=10, schedule="constant")
    before = model.evaluate(x, y, verbose=0)[0]
    (loss,), (correct,), _ = rnn_mnist.training_step(model)([(x, y)])
    after = model.evaluate(x, y, verbose=0)[0]
    assert after < before
    assert float(loss) == pytest.approx(before, rel=1e-4)  # the step reports the loss it started from
    assert 0 <= int(correct) <= len(y)


@pytest.mark.parametrize("batch", one_quick([64, 7, 1], ["64", "7", "1"], quick=1))
def test_splitting_the_batch_between_replicas_gives_the_whole_batchs_step(batch):
    """Replicas, one per core, run side by side for speed; the weights after the step must
    not depend on how many there are (conftest gives this process two CPU devices), nor on
    the blank rows that pad an epoch's last batch to the size of the others."""
    import keras
    import tensorflow as tf
    data = synthetic_mnist(n_train=batch, n_test=1)
    x, y = mnist_files.as_sequences(data["x_train"]), data["y_train"]
    results = []
    for devices, rows in ((["CPU:0"], 0), (["CPU:0", "CPU:1"], 0), (["CPU:0", "CPU:1"], batch + 9)):
        strategy = tf.distribute.MirroredStrategy(devices, tf.distribute.ReductionToOneDevice())
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = rnn_mnist.make_model(x.shape[1:], units=16)
            rnn_mnist.compile_model(model, learning_rate=1e-2, total_steps=10, schedule="constant")
            model.optimizer.build(model.trainable_variables)
        initial = model.get_weights()
        (loss,), (correct,), _ = rnn_mnist.training_step(model, strategy)([(x, y)], rows=rows)
        results.append((float(loss), int(correct), model.get_weights()))
        assert all(not np.allclose(w, v) for w, v in zip(initial, model.get_weights()))
    (loss, correct, weights), *others = results
    for other_loss, other_correct, other_weights in others:
        assert other_loss == pytest.approx(loss, rel=1e-5)
        assert other_correct == correct
        for w, v in zip(weights, other_weights):
            np.testing.assert_allclose(v, w, rtol=1e-4, atol=1e-6)


def test_several_steps_in_one_call_are_the_steps_one_call_each_makes():
    """--steps-per-execution trains on several batches in one call of the graph, for speed:
    the losses, the answers and the weights after them are those of one call per batch,
    an epoch's last, smaller batch and the call's unused slot included."""
    import keras
    import tensorflow as tf
    data = synthetic_mnist(n_train=21, n_test=1)
    x, y = mnist_files.as_sequences(data["x_train"]), data["y_train"]
    batches = [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])]
    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"], tf.distribute.ReductionToOneDevice())
    results = []
    for steps in (1, 4):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = rnn_mnist.make_model(x.shape[1:], units=16)
            rnn_mnist.compile_model(model, learning_rate=1e-2, total_steps=10)
            model.optimizer.build(model.trainable_variables)
        step = rnn_mnist.training_step(model, strategy, steps)
        calls = [batches] if steps > 1 else [[batch] for batch in batches]
        answers = [step(call, rows=8) for call in calls]
        losses, corrects = (np.concatenate([answer[k] for answer in answers]) for k in (0, 1))
        results.append((losses, corrects, model.get_weights(), int(model.optimizer.iterations.numpy())))
    (losses, corrects, weights, iterations), (many_losses, many_corrects, many_weights, many_iterations) = results
    assert len(many_losses) == 3 and iterations == many_iterations == 3
    np.testing.assert_allclose(many_losses, losses, rtol=1e-6)
    np.testing.assert_array_equal(many_corrects, corrects)
    for w, v in zip(weights, many_weights):
        np.testing.assert_allclose(v, w, rtol=1e-5, atol=1e-7)


def test_a_stop_request_on_any_replica_reaches_all():
    import keras
    import tensorflow as tf
    data = synthetic_mnist(n_train=8, n_test=1)
    x, y = mnist_files.as_sequences(data["x_train"]), data["y_train"]
    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"], tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = rnn_mnist.make_model(x.shape[1:], units=4)
        rnn_mnist.compile_model(model, learning_rate=1e-2, total_steps=10)
        model.optimizer.build(model.trainable_variables)
    step = rnn_mnist.training_step(model, strategy, 2)
    assert step([(x, y)], stop=False)[2] == 0
    assert step([(x, y)], stop=True)[2] > 0


def test_calls_of_the_graph_end_where_a_checkpoint_is_due():
    steps = list(range(23))
    assert [len(c) for c in batches.chunked(steps, 4, 10)] == [4, 4, 2, 4, 4, 2, 3]
    assert [c[0] for c in batches.chunked(steps, 4, 10)] == [0, 4, 8, 10, 14, 18, 20]
    # resumed after 7 steps of an epoch whose first step was the run's 31st: the same cuts
    assert [len(c) for c in batches.chunked(steps[7:], 4, 10, done=37)] == [3, 4, 4, 2, 3]
    assert [len(c) for c in batches.chunked(steps, 1, 10)] == [1] * 23


def test_cosine_schedule_decays_to_zero():
    model = rnn_mnist.make_model((mnist_files.TIMESTEPS, mnist_files.FEATURES), units=4)
    rnn_mnist.compile_model(model, learning_rate=2e-3, total_steps=100)
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    for step, rate in [(0, 2e-3), (50, 1e-3), (100, 0.0)]:
        optimizer.iterations.assign(step)
        assert rnn_mnist.learning_rate_now(model) == pytest.approx(rate, rel=1e-3, abs=1e-9)


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("gru", 1), ("lstm", 2)])
def test_the_units_shown_come_from_the_real_cell(cell, layers):
    """The pictures recompute the last recurrent layer in NumPy; its output must be the layer's own."""
    import keras
    keras.utils.set_random_seed(3)
    model = rnn_mnist.make_model((mnist_files.TIMESTEPS, mnist_files.FEATURES), cell=cell, units=12,
                                 layers=layers)
    x = mnist_files.as_sequences(synthetic_mnist(n_train=6, n_test=1)["x_train"])
    trace, last = reading.unit_trace(model, x)
    layer_output = keras.Model(model.inputs[0], model.layers[-2].output)(x)
    np.testing.assert_allclose(last, np.asarray(layer_output), atol=1e-5)
    for name, values in trace.items():
        assert values.shape == (6, mnist_files.TIMESTEPS, 12), name
        low = 0 if name.endswith("gate") else -1
        assert (values >= low).all() and (values <= 1).all(), name
    assert values.std(axis=2).mean() > 0  # units differ from each other: no mean over them


def test_the_units_shown_for_a_digit_are_those_that_vote_most_for_it():
    model = rnn_mnist.make_model((mnist_files.TIMESTEPS, mnist_files.FEATURES), units=32)
    units, digits = reading.voting_units(model, per_digit=3)
    assert list(digits) == [d for d in range(10) for _ in range(3)]
    kernel = model.layers[-1].get_weights()[0]
    for digit in range(10):
        shown = units[digits == digit]
        others = np.setdiff1d(np.arange(32), shown)
        assert kernel[shown, digit].min() > kernel[others, digit].max()
    read = reading.how_it_reads(model, mnist_files.as_sequences(synthetic_mnist(4, 1)["x_train"]))
    shown = reading.UNITS_PER_DIGIT * mnist_files.NUM_CLASSES
    assert all(v.shape == (4, mnist_files.TIMESTEPS, shown) for v in read["state"].values())
    shown_units, shown_digits = reading.voting_units(model)  # the page says which, from the weights
    assert read["units"].tolist() == shown_units.tolist() and read["unit_digits"].tolist() == shown_digits.tolist()


def test_the_readout_after_the_last_row_is_the_prediction_as_the_weights_change():
    """The pictures of each epoch, and the page, read with the model's weights of the moment."""
    model = rnn_mnist.make_model((mnist_files.TIMESTEPS, mnist_files.FEATURES), units=12, layers=2)
    x = mnist_files.as_sequences(synthetic_mnist(n_train=4, n_test=1)["x_train"])
    for weights in (None, [w * 1.5 for w in model.get_weights()]):
        if weights is not None:  # as an epoch of training changes them
            model.set_weights(weights)
        readout = reading.how_it_reads(model, x)["readout"]
        assert readout.shape == (4, mnist_files.TIMESTEPS, mnist_files.NUM_CLASSES)
        np.testing.assert_allclose(readout[:, -1], np.asarray(model(x)), atol=1e-6)


@pytest.mark.parametrize("slices", [1, 2, 3])
def test_prediction_in_slices_and_batches_matches_the_model(slices):
    """evaluate and predict cut the images into batches and slices; the answers must not change."""
    model = rnn_mnist.make_model((mnist_files.TIMESTEPS, mnist_files.FEATURES), units=16)
    x = mnist_files.as_sequences(synthetic_mnist(n_train=23, n_test=1)["x_train"])
    p = graphs.predict(model, x, batch_size=10, slices=slices)
    np.testing.assert_allclose(p, np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    assert graphs.predict(model, x[:0]).shape == (0, mnist_files.NUM_CLASSES)
