"""The command line: a parser for each command, every flag with its help and default,
values checked as they are parsed; and one line, not a traceback, for what goes wrong."""

import argparse
import contextlib
import difflib
import os
import signal
import sys

from .batching import BATCH_WAIT_MS, MAX_BATCH, MAX_QUEUE
from .cores import MIN_IMAGES_PER_REPLICA, usable_cores
from .distribute import DISTRIBUTE_CHOICES, STEPS_PER_EXECUTION, WORKER_WAIT_SECONDS
from .errors import Error, Interrupted, Stopped, UsageError
from .mnist_files import MNIST_URL, TIMESTEPS
from .orders import BIT_REVERSAL, ORDERS, PIXELS, STEPS_OF
from .runs import DEFAULT_LOGDIR

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except where there is none to show (None, or a switch that is off)."""

    def _get_help_string(self, action):  # the one hook argparse offers for this
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


FLAG_ALIASES = {"--lr": "--learning-rate", "--bs": "--batch-size"}  # other tools' names


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (problem and fix), not usage plus error; and a
    flag must be written whole (argparse would take `--epoch` for `--epochs` unasked, and
    `--lr` for `--lr-schedule`), with the nearest flag suggested for one it does not know."""

    def __init__(self, help_command=None, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)
        self.help_command = f"{help_command or self.prog} --help"  # what a mistake's line points to

    def error(self, message):
        unknown = [word for word in message.partition("unrecognized arguments: ")[2].split()
                   if word.startswith("--")]
        if unknown:
            flag = unknown[0].split("=")[0]
            near = self.nearest_flag(flag)
            message = f"{flag} is not a flag of this command" + (f"; did you mean {near}?" if near else "")
        raise UsageError(f"{message} (see {self.help_command})")

    def nearest_flag(self, flag):
        flags = [f for f in self._option_string_actions if f.startswith("--")]
        for guess in (FLAG_ALIASES.get(flag), flag.replace("_", "-")):
            if guess in flags:
                return guess
        close = difflib.get_close_matches(flag, flags, n=1, cutoff=0.6)
        return close[0] if close else None


def whole_number(minimum):
    """An argparse type: a whole number no smaller than `minimum`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be {minimum} or more")
        return value
    return parse


positive_int, non_negative_int = whole_number(1), whole_number(0)


def finite_number(zero_too):
    """An argparse type: a finite number above 0 (or from 0, if `zero_too`); not nan."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not (value >= 0 if zero_too else value > 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text} must be {'0 or ' if zero_too else ''}a positive number")
        return value
    return parse


positive_float, non_negative_float = finite_number(zero_too=False), finite_number(zero_too=True)


def port(text):
    value = whole_number(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is past the last port, 65535; choose 0 to 65535")
    return value


def pixels_per_step(text):
    value = whole_number(1)(text)
    if PIXELS % value:
        raise argparse.ArgumentTypeError(f"{value} does not divide the {PIXELS} pixels into whole "
                                         f"steps; choose one of {', '.join(map(str, STEPS_OF))}")
    return value


def permutation(text):
    """A seed (a whole number, kept as its text) or bitrev."""
    if text == BIT_REVERSAL:
        return text
    try:
        return str(whole_number(0)(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"'{text}' is neither a seed (a whole number) nor "
                                         f"{BIT_REVERSAL}") from None


NAME_BYTES = 255  # the longest name of a file or folder that Linux and macOS take


def folder_text(text):
    """A folder's name as TensorFlow can take it: TensorFlow passes names on as UTF-8, which a
    name read under a locale that is not (LC_ALL=C, with PYTHONUTF8=0) cannot always be."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"has characters this system's locale ({sys.getfilesystemencoding()}) cannot pass on; "
            "use ASCII letters, or run with PYTHONUTF8=1 or a UTF-8 locale (LC_ALL=C.UTF-8)") from None
    return text


def run_name(text):
    if not text or text in (".", "..") or "/" in text or "\\" in text or os.sep in text:
        raise argparse.ArgumentTypeError(f"'{text}' must be a plain folder name, "
                                         "without path separators or '..'")
    folder_text(text)
    if len(text.encode()) > NAME_BYTES:
        raise argparse.ArgumentTypeError(f"is {len(text.encode())} bytes long, and a folder's name can "
                                         f"be at most {NAME_BYTES}; choose a shorter one")
    return text


LATEST_RUN = ""  # what --resume means without a name


def run_to_resume(text):
    return text if text == LATEST_RUN else run_name(text)


def build_parser(recipe, cells):
    """The parser of `train`; `recipe` holds the defaults of the recipe's settings, `cells`
    the recurrent cells it can build."""
    parser = Parser(prog="rnn_mnist.py [train]", help_command="rnn_mnist.py",
                    description="Train an LSTM that reads MNIST digits row by row, "
                                "then test it on the 10,000 test images.",
                    epilog=f"Other commands: {', '.join(COMMANDS[1:])} "
                           "(python rnn_mnist.py COMMAND --help). This process may use "
                           f"{usable_cores()} core(s) (its CPU affinity and cgroup quota); a GPU, "
                           "where TensorFlow finds one, is used by default.",
                    formatter_class=HelpFormatter)
    add_recipe_arguments(parser, recipe, cells)
    add_engine_arguments(parser.add_argument_group("where it trains"))
    output = parser.add_argument_group("output")
    add_run_arguments(output)
    add_logdir_and_verbose(output)
    return parser


def add_recipe_arguments(parser, recipe, cells):
    """The recipe's settings, with their defaults from `recipe`, in three groups."""
    data = parser.add_argument_group("data")
    add_data_arguments(data)
    data.add_argument("--validation-size", type=non_negative_int, default=recipe["validation_size"],
                      metavar="N",
                      help="hold out the last N training images to pick the best epoch "
                           "(0: keep the last epoch)")
    data.add_argument("--shift", type=non_negative_int, default=recipe["shift"], metavar="PIXELS",
                      help="move each training image by up to this many pixels, at random, "
                           "every epoch (0: no augmentation)")
    data.add_argument("--max-train-samples", type=positive_int, metavar="N",
                      help="use only the first N training images (validation included), "
                           "for quick trials")
    reading = parser.add_argument_group("how a digit is read (docs/reading-orders.md)")
    reading.add_argument("--order", choices=ORDERS, default=recipe["order"],
                         help="the order the 784 pixels are read in: row by row, column by column, "
                              "or in one fixed scrambled order (--permutation)")
    reading.add_argument("--pixels-per-step", type=pixels_per_step, default=recipe["pixels_per_step"],
                         metavar="K", help="pixels of that order read at each step, a divisor of "
                         f"784 ({', '.join(map(str, STEPS_OF))}): 28 with --order rows is a row a "
                         "step; 1 is pixel by pixel (sMNIST, or psMNIST with --order permuted)")
    reading.add_argument("--permutation", type=permutation, default=recipe["permutation"],
                         metavar="SEED|bitrev", help="with --order permuted: the pixel read at "
                         "place i is pixel p[i] (row * 28 + column), where p is "
                         "numpy.random.default_rng(SEED).permutation(784); or bitrev: p is 0..1023 "
                         "with their 10 bits reversed, those of 784 or more left out (as S4 does)")
    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=sorted(cells), default=recipe["cell"],
                       help="recurrent cell: lstm, or gru (fewer gates, slightly faster)")
    model.add_argument("--units", type=positive_int, default=recipe["units"], metavar="N",
                       help="units per recurrent layer")
    model.add_argument("--layers", type=positive_int, default=recipe["layers"], metavar="N",
                       help="stacked recurrent layers")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=positive_int, default=recipe["epochs"], metavar="N",
                          help="passes over the training set")
    training.add_argument("--batch-size", type=positive_int, default=recipe["batch_size"], metavar="N",
                          help="images per step")
    training.add_argument("--learning-rate", type=positive_float, default=recipe["learning_rate"],
                          metavar="RATE",
                          help="Adam's starting learning rate")
    training.add_argument("--lr-schedule", choices=["cosine", "constant"], default=recipe["lr_schedule"],
                          help="cosine: decay the rate to zero over the run; constant: keep it")
    training.add_argument("--clip-norm", type=non_negative_float, default=recipe["clip_norm"],
                          metavar="C", help="scale the gradient (all weights' together) down to "
                          "length C when it is longer (0: never); 1 is common for long sequences")
    training.add_argument("--seed", type=non_negative_int, default=recipe["seed"], metavar="N",
                          help="seed for the weights, the shuffling and the shifts")


def add_engine_arguments(group):
    """Where and how fast training runs: the same steps whatever these say."""
    group.add_argument("--intra-op-threads", type=non_negative_int, default=1, metavar="N",
                       help="threads that share one TensorFlow operation (0: TensorFlow's "
                            "choice); this model's operations are too small to split well")
    group.add_argument("--inter-op-threads", type=non_negative_int, metavar="N",
                       help="TensorFlow operations that may run at once (0: TensorFlow's "
                            "choice); default: one per CPU replica, so each core runs a replica "
                            "(for a replica alone: 2, or 1 on one core)")
    group.add_argument("--distribute", choices=DISTRIBUTE_CHOICES, default="auto",
                       help="where to train: none (one device: one core, or one GPU), mirrored "
                            "(every GPU of this machine; without one, --cpu-replicas CPU devices), "
                            "multi-worker (the machines that TF_CONFIG names); auto: multi-worker "
                            "when TF_CONFIG is set, else mirrored, or none with exactly one GPU")
    group.add_argument("--worker-wait", type=positive_float, default=WORKER_WAIT_SECONDS,
                       metavar="SECONDS", help="with several workers: how long each waits for the "
                       "others to join before it gives up")
    group.add_argument("--cpu-replicas", type=positive_int, metavar="N",
                       help="on a machine without a GPU: replicas of the model, one per logical "
                            "CPU device, each training on its part of the batch; default: one per "
                            "core this process may use (its CPU affinity and cgroup quota), with "
                            f"{MIN_IMAGES_PER_REPLICA} images of the batch at least each")
    group.add_argument("--steps-per-execution", type=positive_int, default=STEPS_PER_EXECUTION,
                       metavar="N", help="training steps in one call of TensorFlow's graph: the "
                       "same steps, fewer pauses between them (about a fifth more samples/s on two "
                       "cores than one step a call); Ctrl-C is honoured within N steps")
    group.add_argument("--deterministic", action="store_true",
                       help="make every operation deterministic (a little slower): the same "
                            "seed and settings give the same weights, resumed or not")


def add_run_arguments(output):
    """The run's folder, checkpoints, logs and what it prints."""
    output.add_argument("--run-name", type=run_name, metavar="NAME",
                        help="this run's folder in --logdir; without it, the start time "
                             "(YYYYmmdd-HHMMSS)")
    output.add_argument("--resume", nargs="?", const=LATEST_RUN, type=run_to_resume, metavar="RUN",
                        help="continue the run RUN in --logdir (without RUN: the run started "
                             "or resumed last) from its newest checkpoint that reads (its start "
                             "if it has none, its test if only that is left); only --epochs, the "
                             "output flags and where it runs (the thread flags, --distribute, "
                             "--cpu-replicas, --steps-per-execution, --worker-wait) may change")
    output.add_argument("--checkpoint-every", type=positive_int, default=100, metavar="STEPS",
                        help="save a checkpoint every STEPS batches, besides every epoch")
    output.add_argument("--log-every", type=positive_int, default=50, metavar="STEPS",
                        help="log the training loss and accuracy to TensorBoard every STEPS batches")
    output.add_argument("--figures-every", type=non_negative_int, default=1, metavar="EPOCHS",
                        help="draw the TensorBoard pictures (confusion matrix, mistakes, readout "
                             "and gates over the rows) every EPOCHS epochs (0: never; each drawing "
                             "costs about 1.5 s)")
    output.add_argument("--quiet", action="store_true",
                        help="no progress bars, epoch lines, resume line or summary")


def add_data_arguments(group):
    group.add_argument("--data", metavar="PATH",
                       help="a local mnist.npz (keys x_train, y_train, x_test, y_test) or a folder "
                            "of the four IDX files (optionally .gz); default: download the Keras "
                            "copy, verified by sha256, and cache it in $KERAS_HOME/datasets")
    group.add_argument("--download-url", default=MNIST_URL, metavar="URL",
                       help="where to download mnist.npz from when --data is not given")


def add_logdir_and_verbose(group, also_shown=""):
    group.add_argument("--logdir", default=DEFAULT_LOGDIR, type=folder_text, metavar="DIR",
                       help="the folder of the runs, one sub-folder each: training writes there, "
                            "and the other commands take the newest model from there")
    group.add_argument("--verbose", action="store_true",
                       help="also show TensorFlow's start-up and runtime log messages" + also_shown)


def add_model_arguments(parser, also_shown=""):
    parser.add_argument("--model", metavar="PATH",
                        help="a trained model.keras, or the run folder that holds it; default: "
                             "the newest one in --logdir")
    add_logdir_and_verbose(parser, also_shown)


def command_parser(command, description):
    return Parser(prog=f"rnn_mnist.py {command}", description=description,
                  formatter_class=HelpFormatter)


def build_evaluate_parser():
    parser = command_parser("evaluate", "Test a trained model on the 10,000 MNIST test images: "
                                        "accuracy, loss, per-class accuracy, confusion matrix.")
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=1000, metavar="N",
                        help="images per batch")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return parser


def build_predict_parser():
    parser = command_parser("predict", "Name the digit in your own pictures (PNG, JPEG, BMP or "
                                       "GIF; any size, colour or polarity).")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="pictures of one digit each")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per image instead of a line")
    parser.add_argument("--show-input", metavar="DIR",
                        help="write the 28x28 image the model saw, for each picture, into DIR")
    return parser


def build_export_parser():
    parser = command_parser("export", "Export a trained model as a TensorFlow SavedModel for "
                                      "serving: uint8 images [N, 28, 28] in, probabilities out; or, "
                                      "with --micro, in int8 for a microcontroller.")
    add_model_arguments(parser)
    parser.add_argument("--out", metavar="DIR",
                        help="the folder to create; default: saved_model (or micro, with --micro) "
                             "beside the model")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--tflite", action="store_true",
                      help="also write model.tflite into the SavedModel folder")
    kind.add_argument("--micro", action="store_true",
                      help="instead, write model_int8.tflite (full integer, for TensorFlow Lite "
                           "Micro), the same as a C array (model_int8.cc, .h), and measured.json: "
                           "its accuracy on the test images in TFLM and LiteRT, its size, the "
                           "tensor arena it needs; needs pip install -r requirements-micro.txt")
    data = parser.add_argument_group("with --micro: the images that set its int8 ranges (training) "
                                     "and measure it (test)")
    add_data_arguments(data)
    return parser


def build_serve_parser():
    parser = command_parser("serve", "Serve a page where you draw a digit and watch the model read "
                                     "it, row by row; and its API, POST /api/read.")
    add_model_arguments(parser, also_shown=", and a line per request")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0: every address of this machine)")
    parser.add_argument("--port", type=port, default=8000,
                        help="port to listen on, 0 to 65535 (0: any free one)")
    batching = parser.add_argument_group("batching: pictures that arrive together read in one call")
    batching.add_argument("--max-batch", type=positive_int, default=MAX_BATCH, metavar="N",
                          help="pictures read in one call of the model at most")
    batching.add_argument("--batch-wait-ms", type=non_negative_float, default=BATCH_WAIT_MS,
                          metavar="MS", help="how long a batch waits for pictures still on their "
                          "way in (never for a lone picture)")
    batching.add_argument("--max-queue", type=positive_int, default=MAX_QUEUE, metavar="N",
                          help="pictures waiting at most; one more is answered 503 with Retry-After")
    return parser


def check_sizes(n_train_images, args):
    if args.shift >= TIMESTEPS // 2:
        raise UsageError(f"--shift {args.shift} would move digits out of the frame; "
                         f"choose 0 to {TIMESTEPS // 2 - 1} pixels")
    if args.validation_size >= n_train_images:
        raise UsageError(f"--validation-size {args.validation_size} leaves no training images "
                         f"out of {n_train_images}; choose a smaller one")
    n_fit = n_train_images - args.validation_size
    if args.batch_size > n_fit:
        raise UsageError(f"--batch-size {args.batch_size} is larger than the {n_fit} training "
                         "images; choose a smaller one")


PARSERS = {"train": build_parser, "evaluate": build_evaluate_parser, "predict": build_predict_parser,
           "export": build_export_parser, "serve": build_serve_parser}  # the commands, each with its parser
COMMANDS = tuple(PARSERS)  # the first word of a command line; without one: train


def parser_of(command, recipe, cells):
    build = PARSERS[command]
    return build(recipe, cells) if command == "train" else build()


def words(argv):
    """The command's words: `argv`, or without it this process's command line."""
    return sys.argv[1:] if argv is None else list(argv)


def parse(argv, recipe, cells):
    """(command, its parsed arguments, the train settings named on the command line with
    their values): the first word names the command; without one, train."""
    command, argv = split_command(argv)
    args = parser_of(command, recipe, cells).parse_args(argv)
    given = given_settings(argv, vars(args), recipe, cells) if command == "train" else {}
    if "permutation" in given and args.resume is None and args.order != "permuted":
        raise UsageError(f"--permutation {args.permutation} is for --order permuted (this run "
                         f"reads {args.order}); add --order permuted, or leave --permutation out")
    return command, args, given


def given_settings(argv, dests, recipe, cells):
    """The settings named on the command line, with their values (defaults left out)."""
    not_given = object()
    parser = build_parser(recipe, cells)
    parser.set_defaults(**{dest: not_given for dest in dests})
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not not_given}


def split_command(argv):
    """(command, its arguments)."""
    if not argv or argv[0].startswith("-"):
        return "train", argv
    if argv[0] in COMMANDS:
        return argv[0], argv[1:]
    close = difflib.get_close_matches(argv[0], COMMANDS, n=1, cutoff=0.5)
    raise UsageError(f"'{argv[0]}' is not a command; " + (f"did you mean '{close[0]}'? " if close else "")
                     + f"the commands are {', '.join(COMMANDS)} (python rnn_mnist.py COMMAND --help)")


@contextlib.contextmanager
def answered_in_one_line(command):
    """What ends the command early: for the `command` line, one line (or none) and its exit
    status; for a caller from Python, the Error itself (KeyboardInterrupt as it is).
    A user's mistake, a fault, Ctrl-C outside training, or a reader of the output that left
    early (`| head`)."""
    try:
        yield
    except KeyboardInterrupt:
        if not command:
            raise
        error = Stopped("\nrnn_mnist.py: interrupted; nothing was saved", signal.SIGINT)
    except Interrupted as e:  # before a run's folder was made (a run says what it kept)
        error = Stopped(f"\n{signal.Signals(e.args[0]).name} received: stopped before the run "
                        "began; nothing was saved", e.args[0])
    except BrokenPipeError:  # the reader of the output left early: stop quietly
        if not command:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's recipe
        raise SystemExit(1) from None
    except Error as e:
        error = e
    else:
        return
    if not command:
        raise error
    print(error.line(), file=sys.stderr)
    raise SystemExit(error.status) from None


def flag_reference(parsers, see):
    """docs/flags.md: a table of each command's flags, made from its parser (`parsers`: command ->
    parser), so that it says what --help says; `see` adds a link after a flag's text."""
    sections = ["# Every flag\n", "Made from the parsers by `python docs/make_flags.py`; "
                "`python rnn_mnist.py --help` (or `python rnn_mnist.py COMMAND --help`) prints the same.\n"]
    for command, parser in parsers.items():
        rows = [f"| `{command}` flag | default | what it does |", "| --- | --- | --- |"]
        formatter = parser._get_formatter()  # argparse's own way of writing a flag and its value
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            invocation = (formatter._format_action_invocation(action) if action.option_strings
                          else formatter._format_args(action, action.dest))
            shown = "" if action.default in (None, False) else f"`{action.default}`"
            text = (action.help % vars(action) if "%" in action.help else action.help)
            text += f"; see {see[action.dest]}" if action.dest in see else ""
            cells = [f"`{invocation}`", shown, text]  # a | inside a cell would end it: escaped
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        sections.append("\n".join(rows) + "\n")
    return "\n".join(sections + ["[Back to the README](../README.md)\n"])
