"""The orders a model can read a digit's 784 pixels in (row by row, column by column, one
fixed permutation), in steps of K pixels; and the layer at the front of such a model that
turns the 28x28 image into its sequence, so that every use and every export of the model
reads a picture the way it was trained.

A pixel is named by its place in the image read row by row: row * 28 + column.
"""

import functools
import hashlib

import numpy as np

from .lazy_tensorflow import keras
from .mnist_files import FEATURES, TIMESTEPS

PIXELS = TIMESTEPS * FEATURES  # 784
ORDERS = ("rows", "columns", "permuted")
BIT_REVERSAL = "bitrev"
UNROLL_MAX_STEPS = 56  # the longest sequence a model unrolls on a CPU (rnn_mnist.make_model says why)
STEPS_OF = sorted(k for k in range(1, PIXELS + 1) if PIXELS % k == 0)  # the K that divide 784


def reads_plain_rows(order, pixels_per_step):
    """Today's model, row by row, a row a step: it needs no layer to reorder its image."""
    return order == "rows" and pixels_per_step == FEATURES


def order_name(pixel_order):
    """rows, columns or permuted: which order a model's pixel order [784] is."""
    pixels = np.arange(PIXELS)
    if np.array_equal(pixel_order, pixels):
        return "rows"
    return "columns" if np.array_equal(pixel_order, pixels.reshape(TIMESTEPS, FEATURES).T.reshape(-1)) else "permuted"


def reading_words(pixel_order, pixels_per_step):
    """How a model reads, in words: 'permuted, 16 pixels a step (49 steps)'."""
    pixels = "1 pixel" if pixels_per_step == 1 else f"{pixels_per_step} pixels"
    return f"{order_name(pixel_order)}, {pixels} a step ({PIXELS // pixels_per_step} steps)"


@functools.cache
def reading_order_layer():
    """The Keras layer class, made on first use (Keras is imported lazily), and registered,
    so that a saved model that holds it loads in safe mode."""

    @keras.saving.register_keras_serializable(package="rnn_mnist")
    class ReadingOrder(keras.layers.Layer):
        """Images [N, 28, 28] -> sequences [N, 784/K, K]: the pixels taken in `order` (784
        numbers, kept in the model's config), K consecutive ones per step."""

        def __init__(self, order, pixels_per_step, **kwargs):
            super().__init__(**kwargs)
            self.order = tuple(int(i) for i in order)  # a tuple: Keras would track a list
            self.pixels_per_step = int(pixels_per_step)

        def call(self, images):
            flat = keras.ops.reshape(images, (-1, PIXELS))
            if self.order != tuple(range(PIXELS)):
                flat = keras.ops.take(flat, np.array(self.order, np.int32), axis=1)
            return keras.ops.reshape(flat, (-1, PIXELS // self.pixels_per_step, self.pixels_per_step))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], PIXELS // self.pixels_per_step, self.pixels_per_step)

        def get_config(self):
            return dict(super().get_config(), order=list(self.order), pixels_per_step=self.pixels_per_step)

    return ReadingOrder


def reorder_layer(pixel_order, pixels_per_step):
    """The layer that reads an image in `pixel_order` (the pixel read at each place), K a step."""
    return reading_order_layer()(pixel_order, pixels_per_step, name="reading_order")


def reading_layer(model):
    """The model's ReadingOrder layer, or None for a model that reads row by row, a row a step."""
    return next((layer for layer in model.layers if isinstance(layer, reading_order_layer())), None)


def reading_of(model):
    """(the pixel order [784], pixels per step) a model reads in."""
    layer = reading_layer(model)
    if layer is None:
        return np.arange(PIXELS, dtype=np.int32), FEATURES
    return np.array(layer.order, np.int32), layer.pixels_per_step


def sequences_of(model, x):
    """The sequences [N, T, K] the recurrent layers of `model` read, from images x [N, 28, 28]."""
    layer, x = reading_layer(model), np.asarray(x, np.float32)
    return x if layer is None else np.asarray(layer(x))


def reading_fingerprint(model):
    """How `model` reads, as its checkpoints record it: K, and a digest of the pixel order."""
    pixel_order, pixels_per_step = reading_of(model)
    digest = hashlib.sha256(pixel_order.astype("<i4").tobytes()).hexdigest()[:16]
    return f"{pixels_per_step} pixels a step, pixel order sha256:{digest}"
