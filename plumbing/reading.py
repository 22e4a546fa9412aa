"""How the network reads a digit, for TensorBoard's pictures and the page: the head's
answer after every step (a row, or K pixels of its order), and the gates and state of
chosen units, step by step; of a long sequence, 28 of its steps."""

import numpy as np

from .graphs import input_spec, traced_once
from .lazy_tensorflow import keras, tf
from .mnist_files import as_sequences
from .orders import reading_of, sequences_of


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


def readout_model(model):
    """The same network, but its head reads the state after every step (a row, or K pixels of
    its order), not only the last."""
    return rebuilt(model, lambda recurrent: recurrent[-1].update(return_sequences=True))


def unit_trace(model, x):
    """Per unit and step, the gates and state of the last recurrent layer, for images x
    [N, 28, 28]: {name: [N, T, units]}, and that layer's output after the last step, [N, units].

    Keras does not expose the gates, so the cell is run again here in NumPy from the
    layer's weights, following Keras's LSTM (gates i, f, c, o) and GRU (z, r, h;
    reset after the recurrent product) equations. The state is shown squashed into
    [-1, 1] as the cell itself squashes it: tanh(c) for an LSTM, h for a GRU.
    """
    recurrent = recurrent_layers(model)
    layer = recurrent[-1]
    if len(recurrent) > 1:  # the last layer reads the steps as the layer below it gives them
        x = np.asarray(keras.Model(model.inputs[0], recurrent[-2].output)(x))
    else:  # the steps in the model's order
        x = sequences_of(model, x)
    kernel, recurrent_kernel, bias = (np.asarray(w) for w in layer.get_weights())
    units = recurrent_kernel.shape[0]
    h = np.zeros((len(x), units), np.float32)
    c = np.zeros_like(h)
    trace = {}

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    def record(**values):
        for name, value in values.items():
            trace.setdefault(name.replace("_", " "), []).append(value)

    for t in range(x.shape[1]):
        if isinstance(layer, keras.layers.LSTM):
            z = x[:, t] @ kernel + h @ recurrent_kernel + bias
            i, f, g, o = np.split(z, 4, axis=1)
            i, f, o = sigmoid(i), sigmoid(f), sigmoid(o)
            c = f * c + i * np.tanh(g)
            h = o * np.tanh(c)
            record(input_gate=i, forget_gate=f, output_gate=o, cell_state=np.tanh(c))
        else:
            input_bias, recurrent_bias = bias if bias.ndim == 2 else (bias, np.zeros_like(bias))
            xz, xr, xh = np.split(x[:, t] @ kernel + input_bias, 3, axis=1)
            hz, hr, hh = np.split(h @ recurrent_kernel + recurrent_bias, 3, axis=1)
            update, reset = sigmoid(xz + hz), sigmoid(xr + hr)
            h = update * h + (1 - update) * np.tanh(xh + reset * hh)
            record(update_gate=update, reset_gate=reset, hidden_state=h)
    return {name: np.stack(values, axis=1) for name, values in trace.items()}, h


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
    return top.T.reshape(-1), np.repeat(np.arange(kernel.shape[1]), len(top))


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
    readout = traced_once(model, "readout", lambda: traced_readout(model))
    trace, _ = unit_trace(model, x)
    units, digits = voting_units(model)
    pixel_order, pixels_per_step = reading_of(model)
    steps = shown_steps(len(pixel_order) // pixels_per_step)
    return {"readout": readout(np.asarray(x, np.float32)).numpy()[:, steps],
            "state": {name: values[:, steps][..., units] for name, values in trace.items()},
            "steps": steps + 1, "units": units, "unit_digits": digits}


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


def traced_readout(model):
    copy = readout_model(model)
    return tf.function(lambda images: copy(images, training=False), input_signature=[input_spec(model)])
