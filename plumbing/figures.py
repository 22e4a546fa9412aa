"""The pictures TensorBoard shows each epoch, drawn with matplotlib's object API: the
confusion matrix, the mistakes, and how the network reads a digit row by row."""

import math
import textwrap

import numpy as np

from .metrics import confusion_matrix
from .mnist_files import NUM_CLASSES
from .orders import order_name, reading_of, reading_words, reads_plain_rows
from .reading import UNITS_PER_DIGIT, how_it_reads, recurrent_layers

CARD_INCHES = 3.5  # at 100 dpi, 350 pixels: how wide TensorBoard 2.21's Images and Time Series
# dashboards show a picture in its card (measured in Chromium); a wider one is scaled down, its
# text with it, so each picture is drawn at that width with text of 7 points (10 pixels) or more
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
    figure = new_figure(CARD_INCHES, CARD_INCHES * 0.95)
    ax = figure.add_subplot()
    ax.imshow(counts + 1, cmap="Blues", norm=LogNorm(vmin=1, vmax=counts.max() + 1))
    for (true, guess), n in np.ndenumerate(counts):
        if n:
            dark = (n + 1) > (counts.max() + 1) ** 0.6
            ax.text(guess, true, str(n), ha="center", va="center", fontsize=7 if n < 1000 else 6,
                    color="white" if dark else ("black" if true == guess else "firebrick"))
    ax.set_xticks(range(len(counts)))
    ax.set_yticks(range(len(counts)))
    ax.tick_params(labelsize=8)
    ax.set_xlabel("predicted digit", fontsize=8)
    ax.set_ylabel("true digit", fontsize=8)
    ax.set_title(title, fontsize=8)
    return figure_to_image(figure)


def draw_mistakes(images, labels, predicted, confidence, title, columns=4):
    """A grid of misclassified digits, each captioned 'true -> predicted (confidence)'.

    One mosaic in one axes: a subplot per digit took many times longer to draw.
    """
    rows = max(1, math.ceil(len(images) / columns))
    size, gap = images.shape[1], 10
    mosaic = np.ones((rows * (size + gap), columns * (size + 2)), np.float32) * 0.15
    figure = new_figure(CARD_INCHES, rows * CARD_INCHES / columns * 1.2 + 0.4)
    ax = figure.add_subplot()
    for i, image in enumerate(images):
        top, left = (i // columns) * (size + gap) + gap, (i % columns) * (size + 2) + 1
        mosaic[top:top + size, left:left + size] = image
        ax.text(left + size / 2, top - 1.5, f"{labels[i]} \u2192 {predicted[i]} ({confidence[i]:.0%})",
                ha="center", va="bottom", fontsize=7.5, color="#ffb4a8")
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=7.5, wrap=True)
    return figure_to_image(figure)


def draw_rows(images, captions, panels, title, per_line=2, panels_across=1, legend=None,
              ends=("row 0", "row 27")):
    """Per digit: the image beside heat maps whose rows line up with the image's rows (for a
    model that reads in another order, the steps shown, top to bottom, `ends` naming the first
    and the last).

    `panels` is a list of (name, values [N, T, K], column labels, colour map, range), laid
    out `panels_across` to a line beside the image (the next ones below, under it). Each
    digit and its heat maps are one picture composed here in NumPy, in one axes, with one
    colour bar per colour scale for the whole figure: a subplot per heat map would take
    many times longer to draw. `legend` says what a column, a row and a colour are.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    rows, width = images.shape[1], images.shape[2]
    # heat-map columns are widened so a panel spans about a digit's width (at most 10 px each)
    cells = [min(10, math.ceil(width / values.shape[2])) for _, values, *_ in panels]
    gap, label_room = 2, 9  # between panels; under a line of panels, for its column labels
    places, x, y = [], width + gap, 0  # where each panel's top left corner goes
    for k, ((_, values, *_), cell) in enumerate(zip(panels, cells)):
        if k and k % panels_across == 0:
            x, y = width + gap, y + rows + label_room
        places.append((x, y))
        x += values.shape[2] * cell + gap
    across = max(x for x, _ in places) + max(v.shape[2] * c for (_, v, *_), c in zip(panels, cells))
    down = places[-1][1] + rows
    n = len(images)
    lines = math.ceil(n / per_line)
    strip_inches = CARD_INCHES / per_line
    # the image sits beside its row labels, narrower than its share of the width: 0.8
    figure = new_figure(CARD_INCHES, lines * (0.8 * strip_inches * (down + label_room) / across + 0.25)
                        + 0.6 + 0.12 * len(scales_of(panels)) + (0.5 if legend else 0))
    figure.suptitle(textwrap.fill(title, 75) + ("\n" + textwrap.fill(legend, 70) if legend else ""),
                    fontsize=6.5)
    axes = np.atleast_1d(figure.subplots(lines, per_line)).reshape(-1)
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        picture = np.ones((down, across, 3))
        picture[:rows, :width] = images[i][..., None]
        for (name, values, labels, cmap, (low, high)), cell, (x, y) in zip(panels, cells, places):
            coloured = colormaps[cmap](np.clip((values[i] - low) / (high - low), 0, 1))[..., :3]
            coloured = np.repeat(coloured, rows // len(coloured), axis=0)  # fewer steps: taller
            picture[y:y + rows, x:x + values.shape[2] * cell] = np.repeat(coloured, cell, axis=1)
        ax.imshow(picture, interpolation="nearest")
        named = len(panels) > 1 and i < per_line  # which panel is which, over the first line
        ax.set_title(captions[i], fontsize=7, pad=9 if named and panels_across > 1 else 3)
        for (name, values, labels, *_), cell, (x, y) in zip(panels, cells, places):
            for k, label in enumerate(labels):
                ax.text(x + cell * k + (cell - 1) / 2, y + rows + 0.4, str(label), ha="center",
                        va="top", fontsize=5.5)
            if named:
                ax.text(x + values.shape[2] * cell / 2, y - 0.8, name, ha="center", va="bottom",
                        fontsize=6.5)
        ax.text(-1, 0, ends[0], ha="right", va="center", fontsize=5.5)
        ax.text(-1, rows - 1, ends[1], ha="right", va="center", fontsize=5.5)
    for (cmap, (low, high)), named in scales_of(panels).items():
        bar = figure.colorbar(ScalarMappable(Normalize(low, high), cmap), ax=axes.tolist(),
                              location="bottom", fraction=0.03, aspect=30, pad=0.01)
        bar.set_label(", ".join(named), fontsize=7)
        bar.ax.tick_params(labelsize=6.5)
    return figure_to_image(figure)


def shown_words(steps):
    """Which steps a picture shows, in words: all, or every k-th."""
    if steps[-1] == len(steps):
        return "every step shown"
    if steps[-1] % len(steps) == 0:
        k = steps[-1] // len(steps)
        return f"after every {k}{'nd' if k % 10 == 2 and k != 12 else 'th'} step"  # k is 2 or more
    return f"{len(steps)} of them shown, evenly spaced"


SEEN_DIGITS = 3  # digits in the picture of the pixels read so far
SEEN_SNAPSHOTS = 7  # moments of the reading shown for each


def draw_seen(images, pixel_order, pixels_per_step, steps, title):
    """For each digit, the image after several of the steps shown, its unread pixels blank:
    for a permuted model, the image filling in in its scrambled order."""
    moments = steps[np.linspace(0, len(steps) - 1, min(SEEN_SNAPSHOTS, len(steps))).round().astype(int)]
    size, gap, top = images.shape[1], 2, 9
    mosaic = np.ones((len(images) * (size + top), len(moments) * (size + gap), 3))
    figure = new_figure(CARD_INCHES, CARD_INCHES * mosaic.shape[0] / mosaic.shape[1] + 0.5)
    ax = figure.add_subplot()
    for i, image in enumerate(images):
        for k, step in enumerate(moments):
            read = np.zeros(image.size, bool)
            read[pixel_order[:step * pixels_per_step]] = True
            shown = np.where(read[:, None], image.reshape(-1, 1), [[0.12, 0.16, 0.42]])  # unread: blue
            y, x = i * (size + top) + top, k * (size + gap)
            mosaic[y:y + size, x:x + size] = shown.reshape(size, size, 3)
            if i == 0:
                ax.text(x + size / 2, top - 1.5, f"step {step}", ha="center", va="bottom", fontsize=6.5)
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    ax.set_title(textwrap.fill(title, 70), fontsize=7)
    return figure_to_image(figure)


def scales_of(panels):
    """{(colour map, range): the names of the panels drawn on it}: one colour bar each."""
    scales = {}
    for name, values, labels, cmap, limits in panels:
        scales.setdefault((cmap, limits), []).append(name)
    return scales


def epoch_pictures(model, x_val, y_val, probabilities, epoch):
    """The pictures TensorBoard shows for one epoch, from the validation set: {tag: image}."""
    predicted = probabilities.argmax(axis=1)
    pictures = {"mistakes/confusion_matrix": draw_confusion(
        confusion_matrix(probabilities, y_val),
        f"validation, epoch {epoch}: {np.mean(predicted == y_val):.2%} right")}
    wrong = np.nonzero(predicted != y_val)[0][:SHOWN_MISTAKES]
    if len(wrong):
        pictures["mistakes/misclassified"] = draw_mistakes(
            x_val[wrong], y_val[wrong], predicted[wrong], probabilities[wrong].max(axis=1),
            f"misclassified, epoch {epoch}: true \u2192 predicted (confidence), "
            f"{len(wrong)} of {int(np.sum(predicted != y_val))}")
    # one example of each digit where there is one, then the first mistakes
    shown = [int(np.argmax(y_val == d)) for d in range(NUM_CLASSES) if (y_val == d).any()]
    shown = (shown[:SHOWN_DIGITS - MISTAKES_READ] + list(wrong[:MISTAKES_READ]))[:SHOWN_DIGITS]
    images, labels = x_val[shown], y_val[shown]
    captions = [f"a {label}, read as {guess} ({p:.0%})" for label, guess, p in
                zip(labels, predicted[shown], probabilities[shown].max(axis=1))]
    pictures.update(reading_pictures(model, images, captions, epoch))
    return pictures  # tags named so that TensorBoard, sorting them by name, shows the reading first


def reading_pictures(model, images, captions, epoch):
    """How the model reads these digits: its prediction and its units after each row (or step
    shown), and for a model that reads in another order, the pixels it has read so far."""
    pictures, reading = {}, how_it_reads(model, images)
    pixel_order, pixels_per_step = reading_of(model)
    plain, steps = reads_plain_rows(order_name(pixel_order), pixels_per_step), reading["steps"]
    # a model that reads in another order: its steps shown top to bottom, and said which
    along, ends = ("row by row", ("row 0", "row 27")) if plain else (
        f"step by step ({reading_words(pixel_order, pixels_per_step)}; {shown_words(steps)})",
        (f"step {steps[0]}", f"step {steps[-1]}"))
    after = "row" if plain else "step shown"
    pictures["how_it_reads/prediction_row_by_row"] = draw_rows(
        images, captions,
        [(f"P(digit) after each {after}", reading["readout"], list(range(NUM_CLASSES)), "viridis", (0, 1))],
        f"epoch {epoch}: the prediction forming as the digit is read, {along}", ends=ends)
    first_of_group = np.r_[True, reading["unit_digits"][1:] != reading["unit_digits"][:-1]]
    labels = [str(d) if first else "" for d, first in zip(reading["unit_digits"], first_of_group)]
    pictures["how_it_reads/units_row_by_row"] = draw_rows(
        images, captions,
        [(name, values, labels, "magma" if "gate" in name else "RdBu_r",
          (0, 1) if "gate" in name else (-1, 1)) for name, values in reading["state"].items()],
        f"epoch {epoch}: inside the last {type(recurrent_layers(model)[-1]).__name__} layer, {along}",
        per_line=1, panels_across=2, ends=ends, legend=(
            f"A column is one unit: for each digit the {UNITS_PER_DIGIT} that vote most for it, "
            f"under it. A row is the unit after reading that {after} of the image. Gates run from "
            "0, closed (dark), to 1, open (light); the state, squashed by tanh, from -1 (blue) "
            "to +1 (red)."))
    if not plain:
        pictures["how_it_reads/pixels_seen"] = draw_seen(
            images[:SEEN_DIGITS], pixel_order, pixels_per_step, steps,
            f"epoch {epoch}: the pixels read by each step shown ({reading_words(pixel_order, pixels_per_step)}); "
            "those still unread dark blue")
    return pictures
