"""How the network reads a digit, for TensorBoard's pictures and the page: the head's
answer after every step (a row, or K pixels of its order), and the gates and state of
chosen units, step by step; of a long sequence, 28 of its steps."""

import numpy as np

from .graphs import input_spec, traced_once
from .lazy_tensorflow import keras, tf
from .mnist_files import as_sequences
from .orders import UNROLL_MAX_STEPS, reading_layer, reading_of


def recurrent_layers(model):
    """The model's recurrent layers (LSTM or GRU), first to last."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.RNN)]


def rebuilt(model, change):
    """A copy of `model` with the same weights, after `change(configs)` has edited the
    configs of its recurrent layers, first to last."""
    config = model.get_config()
    recurrent = {layer.name for layer in recurrent_layers(model)}
    change([layer["config"] for layer in config["layers"] if layer["config"]["name"] in recurrent])
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def steps_read(model):
    """images [N, 28, 28] -> the sequences [N, T, K] the last recurrent layer reads: the image's
    steps in the model's order, or what the layer below it gives. Keras layers of `model` itself,
    so a traced function that calls this follows the weights as training changes them."""
    recurrent = recurrent_layers(model)
    if len(recurrent) > 1:
        return keras.Model(model.inputs[0], recurrent[-2].output)
    return reading_layer(model) or tf.identity


def cell_trace(layer, x):
    """TensorFlow's operations for the gates and state of recurrent `layer` at every step of x
    [N, T, K]: ({name: [N, T, units]}, the layer's output after every step [N, T, units]).

    Keras does not expose the gates, so the cell is run again here from the layer's weights,
    following Keras's LSTM (gates i, f, c, o) and GRU (z, r, h; reset after the recurrent
    product) equations. The state is shown squashed into [-1, 1] as the cell itself squashes
    it: tanh(c) for an LSTM, h for a GRU.
    """
    kernel, recurrent_kernel, bias = (tf.convert_to_tensor(w) for w in layer.weights)
    x = tf.convert_to_tensor(x, tf.float32)
    zeros = tf.zeros((tf.shape(x)[0], recurrent_kernel.shape[0]), tf.float32)
    if isinstance(layer, keras.layers.LSTM):
        names, carried = ("input gate", "forget gate", "output gate", "cell state"), 2  # h and c
        x = x @ kernel + bias  # the input's part of every step at once, in one product

        def step(before, x_t):  # before: (h, c, and the step's values shown)
            h, c = before[:2]
            i, f, g, o = tf.split(x_t + h @ recurrent_kernel, 4, axis=1)
            i, f, o = tf.sigmoid(i), tf.sigmoid(f), tf.sigmoid(o)
            c = f * c + i * tf.tanh(g)
            return o * tf.tanh(c), c, i, f, o, tf.tanh(c)
    else:
        names, carried = ("update gate", "reset gate", "hidden state"), 1  # h
        input_bias, recurrent_bias = tf.unstack(bias) if bias.shape.rank == 2 else (bias, tf.zeros_like(bias))
        x = x @ kernel + input_bias

        def step(before, x_t):  # before: (h, and the step's values shown)
            h = before[0]
            xz, xr, xh = tf.split(x_t, 3, axis=1)
            hz, hr, hh = tf.split(h @ recurrent_kernel + recurrent_bias, 3, axis=1)
            update, reset = tf.sigmoid(xz + hz), tf.sigmoid(xr + hr)
            h = update * h + (1 - update) * tf.tanh(xh + reset * hh)
            return h, h, update, reset, h
    before = (zeros,) * (carried + len(names))
    if x.shape[1] <= UNROLL_MAX_STEPS:  # written out step by step, as the model's own layers are:
        after = []                      # a while loop took twice as long at 28 steps
        for t in range(x.shape[1]):
            before = step(before, x[:, t])
            after.append(before)
        steps = [tf.stack(values, axis=1) for values in zip(*after)]
    else:
        steps = [tf.transpose(values, [1, 0, 2])
                 for values in tf.scan(step, tf.transpose(x, [1, 0, 2]), initializer=before)]
    return dict(zip(names, steps[-len(names):])), steps[0]


def unit_trace(model, x):
    """Per unit and step, the gates and state of the last recurrent layer (cell_trace), for
    images x [N, 28, 28]: {name: [N, T, units]} in NumPy, and that layer's output after the last
    step, [N, units]."""
    trace, outputs = cell_trace(recurrent_layers(model)[-1], steps_read(model)(np.asarray(x, np.float32)))
    return {name: values.numpy() for name, values in trace.items()}, outputs[:, -1].numpy()


UNITS_PER_DIGIT = 4  # units shown for each digit in the pictures of the state


def voting_units(model, per_digit=UNITS_PER_DIGIT):
    """The units shown in the pictures of the state, and the digit each is shown for.

    For each digit, the `per_digit` units of the last recurrent layer with the largest
    weight into that digit's softmax input: the units its answer is read from, so a
    drawn 3 lights up the 3's units and a 7 the 7's. An average over all units (what
    this picture showed first) looks nearly alike for every digit. The choice follows
    from the weights alone, so the page needs no data to make it.
    """
    kernel = np.asarray(model.layers[-1].get_weights()[0])  # the head's: [units, classes]
    top = np.argsort(-kernel, axis=0)[:min(per_digit, len(kernel))]  # [per_digit, classes]
    return top.T.reshape(-1), voting_digits(model, per_digit)


def voting_digits(model, per_digit=UNITS_PER_DIGIT):
    """The digit each of voting_units's units is shown for: 0 0 0 0 1 1 1 1 ..."""
    units, classes = model.layers[-1].kernel.shape
    return np.repeat(np.arange(classes), min(per_digit, units))


SHOWN_STEPS = 28  # steps shown of a sequence, at most: all of a short one


def shown_steps(steps, most=SHOWN_STEPS):
    """Which steps (from 0) the pictures and the page show of a sequence of `steps`: all of
    up to 28; of a longer one, 28 evenly spaced, the last among them. For 784 steps of one
    pixel, the 28th, the 56th...: the end of each row's 28 pixels, in the model's order."""
    if steps <= most:
        return np.arange(steps)
    return np.arange(1, most + 1) * steps // most - 1


def how_it_reads(model, x):
    """What the pictures and the page show of digits x [N, 28, 28] in [0, 1], at the steps
    shown: "readout", the class probabilities after each [N, S, classes]; "state", the shown
    units' gates and state after each, {name: [N, S, K]}; "steps", which steps those are
    (from 1); "units" and "unit_digits", which units are shown and the digit each votes for."""
    pixel_order, pixels_per_step = reading_of(model)
    steps = shown_steps(len(pixel_order) // pixels_per_step)
    read = traced_once(model, "reading", lambda: traced_reading(model, steps))
    readout, state, units = read(tf.constant(x, tf.float32))
    return {"readout": readout.numpy(), "state": {name: values.numpy() for name, values in state.items()},
            "steps": steps + 1, "units": units.numpy(), "unit_digits": voting_digits(model)}


def traced_reading(model, steps):
    """One graph for a batch of images: the head's answer after each of `steps`, and the gates
    and state there of the units shown (voting_units, chosen in the graph from the weights of
    the moment). One call per batch, its work outside Python's lock, called as the concrete
    function itself: the page's server reads many pictures at once while its threads take the
    requests, so every millisecond a batch holds the lock is multiplied by their number. The
    head reads the state after every step the way it reads the last: the same weights."""
    layer, below, head = recurrent_layers(model)[-1], steps_read(model), model.layers[-1]
    per_digit = min(UNITS_PER_DIGIT, layer.units)

    def read(images):
        trace, outputs = cell_trace(layer, below(images))
        units = tf.reshape(tf.math.top_k(tf.transpose(head.kernel), per_digit).indices, [-1])  # digit by digit
        at_steps = lambda values: tf.gather(values, steps, axis=1)  # noqa: E731
        return head(at_steps(outputs)), {name: tf.gather(at_steps(values), units, axis=2)
                                         for name, values in trace.items()}, units
    return tf.function(read).get_concrete_function(input_spec(model))


def read_one(model, image):
    """How the network reads one digit, MNIST's uint8 [28, 28]: `read_each`'s record for it."""
    return read_each(model, np.asarray(image)[None])[0]


def read_each(model, images):
    """How the network reads each digit of `images`, MNIST's uint8 [N, 28, 28], in one call: for
    each, how_it_reads's record ("readout" [S, classes], "state" {name: [S, K]}, "steps", "units",
    "unit_digits") with its answer, "digit" and "probabilities", the readout after the last step."""
    reading = how_it_reads(model, as_sequences(np.asarray(images)))
    return [dict(reading, readout=readout, state={name: v[i] for name, v in reading["state"].items()},
                 digit=int(readout[-1].argmax()), probabilities=readout[-1])
            for i, readout in enumerate(reading["readout"])]
