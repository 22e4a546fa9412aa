"""The pictures TensorBoard shows each epoch, drawn with matplotlib's object API: the
confusion matrix, the mistakes, and how the network reads a digit row by row."""

import math

import numpy as np

from .metrics import confusion_matrix
from .mnist_files import NUM_CLASSES
from .reading import UNITS_PER_DIGIT, how_it_reads, recurrent_layers

SHOWN_DIGITS = 8  # digits in the readout and gate pictures
SHOWN_MISTAKES = 24  # misclassified digits shown, at most
MISTAKES_READ = 2  # of the digits in the readout and gate pictures, mistakes (the rest right)


def figure_to_image(figure):
    """A matplotlib figure -> uint8 RGBA pixels [1, H, W, 4] for tf.summary.image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[None].copy()


def new_figure(width, height):
    from matplotlib.figure import Figure  # the object API: no pyplot, no global state
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def draw_confusion(counts, title):
    """The 10x10 confusion matrix with its counts written in, on a log colour scale."""
    from matplotlib.colors import LogNorm
    figure = new_figure(6.4, 5.6)
    ax = figure.add_subplot()
    ax.imshow(counts + 1, cmap="Blues", norm=LogNorm(vmin=1, vmax=counts.max() + 1))
    for (true, guess), n in np.ndenumerate(counts):
        if n:
            dark = (n + 1) > (counts.max() + 1) ** 0.6
            ax.text(guess, true, str(n), ha="center", va="center", fontsize=8,
                    color="white" if dark else ("black" if true == guess else "firebrick"))
    ax.set_xticks(range(len(counts)))
    ax.set_yticks(range(len(counts)))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    return figure_to_image(figure)


def draw_mistakes(images, labels, predicted, confidence, title, columns=8):
    """A grid of misclassified digits, each captioned 'true -> predicted (confidence)'.

    One mosaic in one axes: a subplot per digit took many times longer to draw.
    """
    rows = max(1, math.ceil(len(images) / columns))
    size, gap = images.shape[1], 10
    mosaic = np.ones((rows * (size + gap), columns * (size + 2)), np.float32) * 0.15
    figure = new_figure(columns * 1.05, rows * 1.25 + 0.5)
    ax = figure.add_subplot()
    for i, image in enumerate(images):
        top, left = (i // columns) * (size + gap) + gap, (i % columns) * (size + 2) + 1
        mosaic[top:top + size, left:left + size] = image
        ax.text(left + size / 2, top - 1.5, f"{labels[i]} \u2192 {predicted[i]} ({confidence[i]:.0%})",
                ha="center", va="bottom", fontsize=7.5, color="#ffb4a8")
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return figure_to_image(figure)


def draw_rows(images, captions, panels, title, per_line=2):
    """Per digit: the image beside heat maps whose rows line up with the image's rows.

    `panels` is a list of (name, values [N, T, K], column labels, colour map, range).
    Each digit and its heat maps are one picture composed here in NumPy, in one axes,
    with one colour bar per panel for the whole figure: a subplot per heat map would
    take many times longer to draw.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    rows = images.shape[1]
    # heat-map columns are widened so a panel spans about a digit's width (at most 10 px each)
    cells = [min(10, math.ceil(images.shape[2] / values.shape[2])) for _, values, *_ in panels]
    ticks, names = [], []
    left = images.shape[2] + 2
    for (name, values, labels, cmap, limits), cell in zip(panels, cells):
        ticks += [(left + cell * k + (cell - 1) / 2, str(label)) for k, label in enumerate(labels)]
        names.append((left + values.shape[2] * cell / 2, name))
        left += values.shape[2] * cell + 2
    n = len(images)
    lines = math.ceil(n / per_line)
    figure = new_figure(per_line * left / 22 + 0.4, lines * 1.75 + 1.1)
    figure.suptitle(title)
    axes = np.atleast_1d(figure.subplots(lines, per_line)).reshape(-1)
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        strip = [np.repeat(images[i][..., None], 3, axis=2), np.ones((rows, 2, 3))]
        for (name, values, labels, cmap, (low, high)), cell in zip(panels, cells):
            coloured = colormaps[cmap](np.clip((values[i] - low) / (high - low), 0, 1))[..., :3]
            strip += [np.repeat(coloured, cell, axis=1), np.ones((rows, 2, 3))]
        ax.imshow(np.concatenate(strip[:-1], axis=1), interpolation="nearest")
        named = len(panels) > 1 and i < per_line  # which panel is which, over the first line
        ax.set_title(captions[i], fontsize=9, pad=14 if named else 6)
        for x, label in ticks:
            ax.text(x, rows + 0.6, label, ha="center", va="top", fontsize=6)
        ax.text(-1, 0, "row 0", ha="right", va="center", fontsize=6)
        ax.text(-1, rows - 1, f"row {rows - 1}", ha="right", va="center", fontsize=6)
        if named:
            for x, name in names:
                ax.text(x, -1.2, name, ha="center", va="bottom", fontsize=7)
    scales = {}  # one colour bar for the panels that share a colour scale
    for name, values, labels, cmap, limits in panels:
        scales.setdefault((cmap, limits), []).append(name)
    for (cmap, (low, high)), named in scales.items():
        bar = figure.colorbar(ScalarMappable(Normalize(low, high), cmap), ax=axes.tolist(),
                              location="bottom", fraction=0.04, aspect=40, pad=0.02)
        bar.set_label(", ".join(named), fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return figure_to_image(figure)


def epoch_pictures(model, x_val, y_val, probabilities, epoch):
    """The pictures TensorBoard shows for one epoch, from the validation set: {tag: image}."""
    predicted = probabilities.argmax(axis=1)
    pictures = {"confusion_matrix": draw_confusion(
        confusion_matrix(probabilities, y_val),
        f"validation, epoch {epoch}: {np.mean(predicted == y_val):.2%} right")}
    wrong = np.nonzero(predicted != y_val)[0][:SHOWN_MISTAKES]
    if len(wrong):
        pictures["misclassified"] = draw_mistakes(
            x_val[wrong], y_val[wrong], predicted[wrong], probabilities[wrong].max(axis=1),
            f"misclassified, epoch {epoch}: true \u2192 predicted (confidence), "
            f"{len(wrong)} of {int(np.sum(predicted != y_val))}")
    # one example of each digit where there is one, then the first mistakes
    shown = [int(np.argmax(y_val == d)) for d in range(NUM_CLASSES) if (y_val == d).any()]
    shown = (shown[:SHOWN_DIGITS - MISTAKES_READ] + list(wrong[:MISTAKES_READ]))[:SHOWN_DIGITS]
    images, labels = x_val[shown], y_val[shown]
    captions = [f"a {label}, read as {guess} ({p:.0%})" for label, guess, p in
                zip(labels, predicted[shown], probabilities[shown].max(axis=1))]
    reading = how_it_reads(model, images)
    pictures["readout_over_rows"] = draw_rows(
        images, captions,
        [("P(digit) after each row", reading["readout"], list(range(NUM_CLASSES)), "viridis", (0, 1))],
        f"epoch {epoch}: the prediction forming as the rows are read, top to bottom")
    first_of_group = np.r_[True, reading["unit_digits"][1:] != reading["unit_digits"][:-1]]
    labels = [str(d) if first else "" for d, first in zip(reading["unit_digits"], first_of_group)]
    pictures["gates_over_rows"] = draw_rows(
        images, captions,
        [(name, values, labels, "magma" if "gate" in name else "RdBu_r",
          (0, 1) if "gate" in name else (-1, 1)) for name, values in reading["state"].items()],
        f"epoch {epoch}: units of the last {type(recurrent_layers(model)[-1]).__name__} layer, "
        f"row by row, "
        f"{UNITS_PER_DIGIT} for each digit (those that vote most for it)", per_line=1)
    return pictures
