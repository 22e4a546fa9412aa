"""A model's traced functions, each made once (tracing one of its graphs takes seconds),
and prediction by batches through one of them."""

import weakref

import numpy as np

from .lazy_tensorflow import tf

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


def rows_spec(model, name=None):
    """The signature of a batch of images for `model`'s traced functions: [N, rows, pixels]."""
    return tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=name)


def predict(model, x, batch_size=1000, slices=2):
    """Class probabilities for `x`, a batch at a time. Each batch is cut into `slices`
    parts that the graph runs side by side: an LSTM's chain of steps keeps one core busy,
    so two parts keep two (faster than Keras's `model.predict`: bench/README.md)."""
    def build():
        @tf.function(input_signature=[rows_spec(model)])
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
