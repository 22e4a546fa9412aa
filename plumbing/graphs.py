"""A model's traced functions, each made once (tracing one of its graphs takes seconds),
and prediction by batches through one of them."""

import weakref

import numpy as np

from .cores import operations_at_once, predict_slices, usable_cores
from .lazy_tensorflow import configure_tensorflow, tf

TRACED = weakref.WeakKeyDictionary()  # model -> {key: its traced function}


def traced_once(model, key, build):
    """The function `build()` makes for `model`, made once per (model, key)."""
    made = TRACED.setdefault(model, {})
    if key not in made:
        made[key] = build()
    return made[key]


def slice_bounds(n, slices):
    """(start, end) of `slices` slices of n rows, as equal as can be (n may be a tensor)."""
    edges = [n * k // slices for k in range(slices + 1)]
    return list(zip(edges, edges[1:]))


def input_spec(model, name=None):
    """The signature of a batch of `model`'s input, for its traced functions: images [N, 28, 28]
    (each row a step, or the image that a first layer reads in another order)."""
    return tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=name)


PREDICT_BATCH = 1000  # images in one call of the prediction graph


def configure_for_predicting():
    """TensorFlow's threads for evaluate, predict, the page and the exports: an operation at
    once for each slice of a batch (cores.predict_slices: one per core this process may use),
    one thread inside each. On 2 cores: 2 slices."""
    cores = usable_cores()
    configure_tensorflow(1, operations_at_once(cores, predict_slices(cores, PREDICT_BATCH)))


def predict(model, x, batch_size=PREDICT_BATCH, slices=None):
    """Class probabilities for `x`, a batch at a time. Each batch is cut into `slices`
    parts that the graph runs side by side (default: cores.predict_slices): an LSTM's chain
    of steps keeps one core busy, so two parts keep two (faster than Keras's `model.predict`:
    bench/README.md)."""
    slices = slices or predict_slices(usable_cores(), batch_size)

    def build():
        @tf.function(input_signature=[input_spec(model)])
        def probabilities(images):
            return tf.concat([model(images[start:end], training=False)
                              for start, end in slice_bounds(tf.shape(images)[0], slices)], axis=0)
        return probabilities

    probabilities = traced_once(model, ("predict", slices), build)
    x = np.asarray(x, np.float32)
    if not len(x):
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate([probabilities(x[start:start + batch_size]).numpy()
                           for start in range(0, len(x), batch_size)])
