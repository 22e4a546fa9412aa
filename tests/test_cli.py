"""The command line: a whole run on tiny data, what it records, and how it answers mistakes."""
import json
import os
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest

import rnn_mnist
from plumbing import cli, distribute, mnist_files, runs
from conftest import REPO, as_command

TINY = ["--epochs", "2", "--batch-size", "32", "--validation-size", "40", "--units", "8", "--quiet"]


def tensorboard_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(folder)
    events.Reload()
    return set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])


def test_a_run_records_config_model_metrics_and_logs(tmp_path, tiny_npz):
    logdir = tmp_path / "logs"
    metrics = rnn_mnist.main(["--data", tiny_npz, "--logdir", str(logdir), "--run-name", "r1", *TINY])
    run = logdir / "r1"
    entries = os.listdir(run)
    assert sorted(e for e in entries if "tfevents" not in e) == [
        "checkpoints", "config.json", "metrics.json", "model.keras", "train", "validation"]
    assert any("tfevents" in e for e in entries)  # the run's own: config, hparams, test results

    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 2 and config["cell"] == "lstm" and config["units"] == 8
    assert config["train_images"] == 200 and config["validation_images"] == 40

    saved = json.loads((run / "metrics.json").read_text())
    assert saved == metrics
    for key in ("test_accuracy", "test_loss", "epochs", "train_seconds", "samples_per_second"):
        assert key in saved
    assert saved["epochs"] == 2 and saved["test_images"] == 60
    assert 0.0 <= saved["test_accuracy"] <= 1.0 and saved["samples_per_second"] > 0

    # the saved model is the one that was tested
    import keras
    model = keras.models.load_model(run / "model.keras")
    x_test, y_test = (np.load(tiny_npz)[k] for k in ("x_test", "y_test"))
    predicted = np.asarray(model(mnist_files.as_sequences(x_test))).argmax(axis=1)
    assert np.mean(predicted == y_test) == pytest.approx(saved["test_accuracy"], abs=1e-6)

    assert {"epochs/loss", "epochs/accuracy", "training/learning_rate"} <= tensorboard_tags(str(run / "train"))
    assert {"epochs/loss", "epochs/accuracy"} <= tensorboard_tags(str(run / "validation"))


@pytest.mark.full
def test_gru_and_stacked_layers_train(tmp_path, tiny_npz):
    metrics = rnn_mnist.main(["--data", tiny_npz, "--logdir", str(tmp_path), "--run-name", "g",
                              "--cell", "gru", "--layers", "2", *TINY, "--figures-every", "0"])
    assert metrics["epochs"] == 2  # the pictures of a stacked GRU: tests/test_model.py
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    assert config["cell"] == "gru" and config["layers"] == 2


def test_an_earlier_run_is_never_overwritten(tmp_path, tiny_npz, capsys):
    run = tmp_path / "kept"
    run.mkdir()
    (run / "model.keras").write_bytes(b"an earlier model")
    with pytest.raises(SystemExit) as exit_:
        as_command(["--data", tiny_npz, "--logdir", str(tmp_path), "--run-name", "kept", *TINY])
    assert exit_.value.code == 2
    assert "already holds a run; choose another --run-name" in capsys.readouterr().err
    assert os.listdir(run) == ["model.keras"]
    assert (run / "model.keras").read_bytes() == b"an earlier model"


BAD_SETTINGS = [
    (["--epochs", "0"], "--epochs: 0 must be 1 or more"),
    (["--epochs", "-3"], "--epochs: -3 must be 1 or more"),
    (["--epochs", "ten"], "--epochs: 'ten' is not a whole number"),
    (["--batch-size", "0"], "--batch-size: 0 must be 1 or more"),
    (["--steps-per-execution", "0"], "--steps-per-execution: 0 must be 1 or more"),
    (["--units", "-1"], "--units: -1 must be 1 or more"),
    (["--layers", "x"], "--layers: 'x' is not a whole number"),
    (["--learning-rate", "0"], "--learning-rate: 0 must be a positive number"),
    (["--learning-rate", "nan"], "--learning-rate: nan must be a positive number"),
    (["--learning-rate", "fast"], "--learning-rate: 'fast' is not a number"),
    (["--cell", "rnn"], "--cell: invalid choice: 'rnn'"),
    (["--shift", "14"], "--shift 14 would move digits out of the frame; choose 0 to 13 pixels"),
    (["--run-name", "../escape"], "--run-name: '../escape' must be a plain folder name"),
    (["--run-name", ".."], "--run-name: '..' must be a plain folder name"),
    (["--validation-size", "240"], "--validation-size 240 leaves no training images"),
    (["--batch-size", "500"], "--batch-size 500 is larger than the 200 training images"),
    (["--pixels-per-step", "5"], "--pixels-per-step: 5 does not divide the 784 pixels into whole "
                                 "steps; choose one of 1, 2, 4, 7, 8, 14, 16, 28, 49, 56, 98, 112, 196, 392, 784"),
    (["--permutation", "3"], "--permutation 3 is for --order permuted (this run reads rows); add "
                             "--order permuted, or leave --permutation out"),
    (["--order", "permuted", "--permutation", "x"], "--permutation: 'x' is neither a seed (a whole "
                                                    "number) nor bitrev"),
    (["--order", "spiral"], "--order: invalid choice: 'spiral'"),
    (["--clip-norm", "-1"], "--clip-norm: -1 must be 0 or a positive number"),
]


@pytest.mark.parametrize("argv,message", BAD_SETTINGS, ids=[" ".join(a) for a, _ in BAD_SETTINGS])
def test_bad_settings_get_one_line_and_exit_2(tmp_path, tiny_npz, capsys, argv, message):
    base = ["--data", tiny_npz, "--logdir", str(tmp_path / "logs"), "--validation-size", "40"]
    with pytest.raises(SystemExit) as exit_:
        as_command(base + argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "logs").exists() or os.listdir(tmp_path / "logs") == []


def test_a_log_folder_that_cannot_be_made(tmp_path, tiny_npz, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_:
        as_command(["--data", tiny_npz, "--logdir", str(blocker / "logs"), *TINY])
    assert exit_.value.code == 2
    assert "give --logdir a folder you can write to" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def run_script(*argv, cwd):
    return subprocess.run([sys.executable, os.path.join(REPO, "rnn_mnist.py"), *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.full
def test_console_shows_one_line_for_a_mistake_and_no_tensorflow_chatter(tmp_path, tiny_npz):
    bad = run_script("--data", str(tmp_path / "missing.npz"), cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        f"rnn_mnist.py: error: --data {tmp_path / 'missing.npz'} does not exist; give the path "
        "of a mnist.npz or of a folder holding the four IDX files"]
    assert bad.stdout == ""

    good = run_script("--data", tiny_npz, *TINY[:-1], "--run-name", "quiet", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    for chatter in ("oneDNN", "absl", "I0000", "WARNING", "Traceback"):
        assert chatter not in good.stderr + good.stdout
    assert "test accuracy" in good.stdout
    assert "trained 2 epochs in " in good.stdout
    assert f"tensorboard --logdir {runs.DEFAULT_LOGDIR}" in good.stdout
    assert (tmp_path / "Visualize" / "quiet" / "model.keras").is_file()


def help_options(command):
    """{flag: default or None} as `--help` shows them, on a screen wide enough not to wrap."""
    text = cli.parser_of(command, rnn_mnist.RECIPE, rnn_mnist.RECURRENT_CELLS).format_help()
    options = {}
    for block in re.split(r"\n(?=  -)", text):
        flags = re.findall(r"(?<![\w-])--[a-z][a-z-]*", block.split("\n")[0])
        if flags:
            default = re.search(r"\(default: (.*?)\)", " ".join(block.split()))
            options[flags[0]] = default.group(1) if default else None
    return options


def readme_tables():
    """{command: {flag: default}} from the flag tables of docs/flags.md, headed '| `command` flag |'."""
    readme = open(os.path.join(REPO, "docs", "flags.md")).read()
    tables = {}
    for command, body in re.findall(r"^\| `(\w+)` flag \|.*\n((?:\|.*\n)+)", readme, flags=re.M):
        rows = re.findall(r"^\| `(--[a-z-]+)[^`]*` \|([^|]*)\|", body, flags=re.M)
        tables[command] = {flag: default.strip().strip("`") for flag, default in rows}
    return tables


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_readme_flag_tables_match_help(monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "1000")
    in_help, in_readme = help_options(command), readme_tables()[command]
    assert set(in_readme) == set(in_help) - {"--help"}
    for flag, default in in_help.items():
        if default not in (None, "None", "False"):
            assert in_readme[flag] == default, flag


def test_the_flag_reference_is_the_one_the_parsers_make():
    made = runpy.run_path(os.path.join(REPO, "docs", "make_flags.py"))["reference"]()
    written = open(os.path.join(REPO, "docs", "flags.md")).read()
    assert written == made, "docs/flags.md is not what the parsers say: run python docs/make_flags.py"


def test_every_command_that_uses_a_model_is_one_the_command_line_knows():
    assert set(rnn_mnist.USES) == set(cli.COMMANDS) - {"train"}
    assert cli.COMMANDS[0] == "train"  # what runs without a command
    epilog = cli.parser_of("train", rnn_mnist.RECIPE, rnn_mnist.RECURRENT_CELLS).epilog
    assert epilog.startswith(f"Other commands: {', '.join(rnn_mnist.USES)} ")


def modules_loaded_by(*argv):
    """Run the script's command line in a fresh Python; return its output and whether
    TensorFlow was imported by the time it finished."""
    code = ("import runpy, sys\n"
            f"sys.argv = {['rnn_mnist.py', *argv]!r}\n"
            "try:\n"
            f"    runpy.run_path({os.path.join(REPO, 'rnn_mnist.py')!r}, run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return done.stdout, done.stderr


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["export", "-h"],
                                  ["--epochs", "0"], ["evaluate", "--json", "--bogus"]],
                         ids=["help", "command-help", "short-help", "bad-flag", "unknown-flag"])
def test_help_and_usage_mistakes_answer_without_importing_tensorflow(argv):
    out, err = modules_loaded_by(*argv)
    assert "usage:" in out or "error:" in err
    assert err.splitlines()[-1] == "tensorflow imported: False"


def test_importing_the_script_does_no_work():
    done = subprocess.run([sys.executable, "-c", "import sys, rnn_mnist; print(sorted(m for m in "
                           "('tensorflow', 'keras') if m in sys.modules))"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize("word,suggestion", [("evalute", "did you mean 'evaluate'? "),
                                             ("prdict", "did you mean 'predict'? "),
                                             ("xyzzy", "")])
def test_a_misspelt_command_is_named_with_the_nearest_one(capsys, word, suggestion):
    with pytest.raises(SystemExit) as exit_:
        as_command([word, "--model", "m.keras"])
    assert exit_.value.code == 2
    commands = ", ".join(cli.COMMANDS)
    assert capsys.readouterr().err == (f"rnn_mnist.py: error: '{word}' is not a command; {suggestion}"
                                       f"the commands are {commands} (python rnn_mnist.py COMMAND --help)\n")


def test_the_summary_of_a_one_epoch_run_says_epoch(capsys):
    rnn_mnist.print_summary({"test_accuracy": 0.97, "test_loss": 0.1, "test_images": 10_000, "epochs": 1,
                             "train_seconds": 6.6, "samples_per_second": 8390.0, "best_epoch": 1},
                            "Visualize/r", "Visualize",
                            distribute.Placement("mirrored", None, distribute.ALONE, "cpu", 2, 1, 2, 2))
    assert ("trained 1 epoch in 6.6 s (8,390 samples/s, 2 CPU replicas, 1 thread each); best epoch 1"
            in capsys.readouterr().out)


@pytest.mark.parametrize("argv,flag,nearest", [
    (["--lr", "0.001"], "--lr", "--learning-rate"),
    (["--learning_rate", "0.001"], "--learning_rate", "--learning-rate"),
    (["--epoch", "3"], "--epoch", "--epochs"), (["evaluate", "--jsn"], "--jsn", "--json"),
    (["serve", "--prot", "8001"], "--prot", "--port")],
    ids=["lr", "underscore", "cut-short", "evaluate", "serve"])
def test_a_flag_is_taken_only_whole_and_the_nearest_is_named(tmp_path, capsys, argv, flag, nearest):
    with pytest.raises(SystemExit) as exit_:
        as_command([*argv, "--logdir", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag} is not a flag of this command; did you mean {nearest}?" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.full
def test_output_into_a_pipe_has_no_bars_but_a_line_per_epoch(tmp_path, tiny_npz):
    done = run_script("--data", tiny_npz, *TINY[:-1], "--run-name", "piped", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr + done.stdout and "\x1b[" not in done.stderr + done.stdout
    assert [line.split()[1] for line in done.stdout.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]


def test_max_train_samples_says_how_many_images_are_trained_on(tmp_path, tiny_npz, capsys):
    rnn_mnist.main(["--data", tiny_npz, "--logdir", str(tmp_path), "--run-name", "few",
                    "--max-train-samples", "150", "--figures-every", "0", *TINY[:-1]])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("training on 110 images: the first 150 (--max-train-samples), less "
                                   "the last 40 held out for validation (--validation-size)")
    assert json.loads((tmp_path / "few" / "config.json").read_text())["train_images"] == 110


def test_a_python_without_the_packages_is_told_how_to_install_them():
    # -S leaves out site-packages: a Python where requirements.txt was never installed
    for argv in ([], ["predict", "x.png"]):
        done = subprocess.run([sys.executable, "-S", "rnn_mnist.py", *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert "numpy" in lines[0] and "tqdm" in lines[0] and "tensorflow" in lines[0]
        assert "not installed" in lines[0] and lines[0].endswith("pip install -r requirements.txt")


def test_every_link_of_the_readme_and_docs_resolves():
    """Each relative link of README.md and docs/*.md names a file of the repo and, after a #,
    a heading of that file (GitHub's anchors: lower case, punctuation dropped, spaces as -)."""
    def anchors(path):
        with open(path) as f:
            return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                    for line in f if line.startswith("#")}

    pages = [os.path.join(REPO, "README.md")] + [
        os.path.join(REPO, "docs", name) for name in sorted(os.listdir(os.path.join(REPO, "docs")))]
    checked = 0
    for page in pages:
        text = re.sub(r"```.*?```", "", open(page).read(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            assert os.path.exists(path), f"{os.path.relpath(page, REPO)}: {target}"
            if anchor:
                assert anchor in anchors(path), f"{os.path.relpath(page, REPO)}: {target}"
            checked += 1
    assert checked > 20
