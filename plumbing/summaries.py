"""TensorBoard's event files: summaries held until the next checkpoint, the run's graph,
config and hyperparameters, histograms of weights and gradients, the test results."""

import os

from .graphs import input_spec
from .lazy_tensorflow import tf
from .metrics import per_class


class SummaryBuffer:
    """TensorBoard summaries held until the next checkpoint, then written and flushed.

    So the event files never run ahead of the checkpoint: a run killed between two
    checkpoints and resumed writes each step once, with no duplicated or rewound
    points on TensorBoard's step axis. Writers: "train" and "validation" (overlaid
    by TensorBoard), and "" for the run itself (config, hparams, test results).
    """

    def __init__(self, run_dir):
        self.writers = {name: tf.summary.create_file_writer(os.path.join(run_dir, name))
                        for name in ("", "train", "validation")}
        self.pending = []

    def add(self, writer, tag, value, step, kind="scalar"):
        if kind == "scalar":
            value = float(value)
        self.pending.append((writer, kind, tag, value, int(step)))

    def flush(self):
        for writer, kind, tag, value, step in self.pending:
            with self.writers[writer].as_default():
                getattr(tf.summary, kind)(tag, value, step=step)  # scalar, histogram, image, text
        for writer in self.writers.values():
            writer.flush()
        self.pending = []

    def close(self):
        for writer in self.writers.values():
            writer.close()


def log_model_graph(summaries, model):
    """The forward pass's graph, for TensorBoard's Graphs dashboard."""
    forward = tf.function(lambda rows: model(rows, training=False))
    graph = forward.get_concrete_function(input_spec(model, name="rows")).graph
    with summaries.writers[""].as_default():
        tf.summary.graph(graph)


def log_run_start(summaries, model, config, hparams_keys):
    """Once per run: the graph, the resolved config as text, and the hyperparameters (the
    settings named in `hparams_keys`), for the HParams dashboard."""
    from tensorboard.plugins.hparams import api as hparams
    log_model_graph(summaries, model)
    rows = [[f"`{key}`", f"`{value}`"] for key, value in config.items()]
    with summaries.writers[""].as_default():
        tf.summary.text("config", markdown_table(["setting", "value"], rows), step=0)
        hparams.hparams({key: "none" if config[key] is None else config[key] for key in hparams_keys},
                        trial_id=config["run_name"])  # None (no permutation): HParams takes no None
    summaries.writers[""].flush()


def log_test_results(run_dir, test, counts, step):
    """The test accuracy and loss (for the HParams table) and the per-class table, as text."""
    writer = tf.summary.create_file_writer(run_dir)
    with writer.as_default():
        tf.summary.scalar("test/accuracy", test["accuracy"], step=step)
        tf.summary.scalar("test/loss", test["loss"], step=step)
        tf.summary.text("test/per_class", per_class_table(counts), step=step)
    writer.close()


def log_weights_and_gradients(summaries, model, images, labels, epoch):
    """Histograms of every weight, and of the gradients on one fixed batch, with their norms."""
    with tf.GradientTape() as tape:
        loss = model.loss(labels, model(images, training=True))
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    for variable, gradient in zip(variables, gradients):
        name = variable.path
        summaries.add("train", f"training/weights/{name}", variable.numpy(), epoch, kind="histogram")
        summaries.add("train", f"training/gradients/{name}", gradient.numpy(), epoch, kind="histogram")
        summaries.add("train", f"training/gradient_norm/{name}", float(tf.norm(gradient)), epoch)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def per_class_table(counts):
    rows = [[digit, f"{total:,}", f"{precision:.2%}", f"{recall:.2%}"]
            for digit, total, _, recall, precision in per_class(counts)]
    return markdown_table(["digit", "images", "precision", "recall"], rows)
