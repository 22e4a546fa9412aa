"""The plumbing of rnn_mnist.py: what makes the recipe robust and fast, one module per
concern. The script imports these; none of them imports the script. Importing the package
does nothing else: `installed.require_installed` is the script's first call.

    installed        the packages rnn_mnist needs, named in one line when missing

    lazy_tensorflow  TensorFlow imported on first use and quietly; its log held back
    errors           what ends a command early: a user's mistake, a stop, a diverged loss
    mnist_files      the facts of MNIST, its files and the download; images to sequences
    orders           a model's first layer for another reading order; how a model reads
    atomic           files written whole or not at all
    batches          batches made ahead in a thread, grouped into calls of the graph
    graphs           a model's traced functions, made once; prediction by batches
    metrics          cross-entropy, accuracy, the confusion matrix, per-digit figures
    cores            the cores this process may use; replicas and slices for them
    distribute       where a run trains (Placement), TF_CONFIG, workers, the steps graph
    cluster_watch    the process that watches a worker wait for the others
    locks            a run folder held by one process, on any system
    runs             run folders (one process each), their config, resume, and stops
    checkpoints      the training state, saved as it goes; the newest that reads found again
    training_hooks   the training loop's machinery: bars, checkpoints due, the agreed stop
    faults           a full disk, an unwritable folder, a stop outside the loop: one line
    summaries        TensorBoard's event files: graph, config, hparams, histograms
    reading          how the network reads: readout after every step, units' gates
    figures          the pictures TensorBoard shows each epoch
    pictures         people's own pictures of a digit, decoded and made MNIST-like
    using            a trained model: evaluate, predict, export
    server           the page's server, and serve
    cli              the command line: parsers, flag values, one-line errors
"""
