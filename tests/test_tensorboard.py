"""The real TensorBoard server shows every dashboard of a run: scalars, histograms,
images, graphs, text and hparams."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import rnn_mnist


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, body=None):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}
                                     if body else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def served_run(tmp_path, tiny_npz):
    logdir = tmp_path / "Visualize"
    rnn_mnist.main(["--data", tiny_npz, "--epochs", "2", "--batch-size", "32", "--units", "8",
                    "--validation-size", "40", "--log-every", "2", "--logdir", str(logdir),
                    "--run-name", "shown", "--quiet"])
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                               "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false",
                               "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # until the server answers and has read the run
            try:
                if "shown/validation" in get(base + "/data/plugin/images/tags"):
                    break
            except OSError:
                pass
            assert server.poll() is None, "tensorboard exited"
            assert time.monotonic() < deadline, "tensorboard did not load the run"
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.full
def test_every_dashboard_is_active_and_lists_the_runs_tags(served_run):
    base = served_run
    plugins = get(base + "/data/plugins_listing")
    for name in ("scalars", "histograms", "images", "graphs", "text", "hparams"):
        assert plugins[name]["enabled"], name

    scalars = get(base + "/data/plugin/scalars/tags")
    assert {"epochs/accuracy", "epochs/loss", "training/learning_rate", "training/samples_per_second",
            "steps/loss", "steps/accuracy"} <= set(scalars["shown/train"])
    assert {"epochs/loss", "epochs/accuracy"} <= set(scalars["shown/validation"])
    # sorted by name, as TensorBoard lists them: the epochs' accuracy and loss (training and
    # validation in one chart each) first, then the pictures of the reading (below), the steps',
    # and the mechanics (training/...) last
    tags = sorted(scalars["shown/train"])
    assert tags[:2] == ["epochs/accuracy", "epochs/loss"] and tags[-1].startswith("training/")
    assert ["epochs", "how_it_reads", "mistakes", "steps", "test", "training"] == sorted(
        {tag.split("/")[0] for run in ("shown", "shown/train", "shown/validation")
         for tag in [*scalars.get(run, {}), *get(base + "/data/plugin/images/tags").get(run, {})]})
    assert {"test/accuracy", "test/loss"} <= set(scalars["shown"])
    assert any(tag.startswith("training/gradient_norm/") for tag in scalars["shown/train"])

    histograms = get(base + "/data/plugin/histograms/tags")["shown/train"]
    assert any(t.startswith("training/weights/") and t.endswith("recurrent_kernel") for t in histograms)
    assert any(t.startswith("training/gradients/") and "classifier" in t for t in histograms)

    images = get(base + "/data/plugin/images/tags")["shown/validation"]
    assert sorted(images) == ["how_it_reads/prediction_row_by_row", "how_it_reads/units_row_by_row",
                              "mistakes/confusion_matrix", "mistakes/misclassified"]  # the reading first

    assert "shown" in get(base + "/data/plugin/graphs/info")
    assert {"config", "test/per_class"} <= set(get(base + "/data/plugin/text/tags")["shown"])

    experiment = get(base + "/data/plugin/hparams/experiment", body=b'{"experimentName": ""}')
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert {"cell", "units", "learning_rate", "batch_size"} <= names
    metrics = {(m["name"].get("group", ""), m["name"]["tag"]) for m in experiment["metricInfos"]}
    assert {("", "test/accuracy"), ("validation", "epochs/accuracy")} <= metrics, metrics
