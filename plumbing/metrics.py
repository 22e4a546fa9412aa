"""How good a model's answers are: cross-entropy and accuracy, the confusion matrix, and
per digit its recall and precision."""

import numpy as np

from .graphs import predict
from .mnist_files import NUM_CLASSES

SMALLEST_PROBABILITY = 1e-7  # log(0) would make one sure mistake an infinite loss


def scores(probabilities, labels):
    """Cross-entropy and accuracy of predicted class probabilities."""
    picked = probabilities[np.arange(len(labels)), labels]
    return {"loss": float(-np.mean(np.log(np.clip(picked, SMALLEST_PROBABILITY, 1.0)))),
            "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels))}


def evaluate(model, x, y, batch_size=1000):
    return scores(predict(model, x, batch_size), y)


def confusion_matrix(probabilities, labels, num_classes=NUM_CLASSES):
    """counts[true digit, predicted digit] of the answers `probabilities` [N, classes] give."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), probabilities.argmax(axis=1)), 1)
    return counts


def per_class(counts):
    """Per digit: (digit, images, correct, recall, precision) from a confusion matrix."""
    for digit in range(len(counts)):
        right, total, called = counts[digit, digit], counts[digit].sum(), counts[:, digit].sum()
        yield digit, total, right, right / max(total, 1), right / max(called, 1)
