"""Every machine a learner has: the cores a process may use (faked: 1, 2, 8, 64, and a cgroup
quota), where a run is placed on them, a Python without what only POSIX has (as on Windows),
and requirements that pick TensorFlow's build for each platform."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from plumbing import cores, distribute
from plumbing.cli import build_parser
from conftest import REPO

import rnn_mnist


def fake_machine(monkeypatch, count):
    """This process made to see `count` cores, as os.cpu_count and the affinity say."""
    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: count)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(count)), raising=False)


def fake_cgroup(tmp_path, v2_limits=None, v1=None, path="/"):
    """A /proc/self/cgroup and a cgroup tree: v2_limits maps a cgroup's path to its cpu.max,
    v1 is (quota, period) of the cpu controller at `path`."""
    root = tmp_path / "cgroup"
    lines = [f"0::{path}"]
    for where, limit in (v2_limits or {}).items():
        folder = root / where.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.max").write_text(limit + "\n")
    if v1:
        folder = root / "cpu,cpuacct" / path.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (folder / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
        lines = [f"4:cpu,cpuacct:{path}", "1:name=systemd:/"]
    (tmp_path / "self_cgroup").write_text("\n".join(lines) + "\n")
    return str(root), str(tmp_path / "self_cgroup")


@pytest.mark.parametrize("count", [1, 2, 8, 64])
def test_the_cores_counted_are_the_ones_this_process_may_use(monkeypatch, tmp_path, count):
    fake_machine(monkeypatch, count)
    assert cores.usable_cores(*fake_cgroup(tmp_path)) == count  # no quota


def test_a_cgroup_quota_counts_for_less_than_the_cores(monkeypatch, tmp_path):
    fake_machine(monkeypatch, 64)
    for case, (limits, expected) in enumerate([({"/": "200000 100000"}, 2),  # docker --cpus 2
                                               ({"/": "max 100000"}, 64),    # no quota
                                               ({"/": "150000 100000"}, 2),  # 1.5 cores: 2 busy in part
                                               ({"/": "50000 100000"}, 1),   # half a core
                                               ({"/": "400000 100000", "/a/b": "300000 100000"}, 3)]):
        machine = tmp_path / f"case{case}"  # the last: the nearer of two quotas counts
        assert cores.usable_cores(*fake_cgroup(machine, limits, path="/a/b")) == expected, limits
    assert cores.usable_cores(*fake_cgroup(tmp_path / "v1", v1=(200000, 100000))) == 2  # cgroup v1
    assert cores.usable_cores(*fake_cgroup(tmp_path / "v1none", v1=(-1, 100000))) == 64
    assert cores.usable_cores("/nowhere", "/nowhere/cgroup") == 64  # no cgroups at all (macOS, Windows)
    fake_machine(monkeypatch, 2)
    assert cores.usable_cores(*fake_cgroup(tmp_path / "more", {"/": "800000 100000"})) == 2  # quota > cores


def settings_of(*flags):
    return build_parser(rnn_mnist.RECIPE, rnn_mnist.RECURRENT_CELLS).parse_args(list(flags))


@pytest.mark.parametrize("count, replicas, threads, at_once", [
    (1, 1, 1, 1), (2, 2, 1, 2), (8, 8, 1, 8), (64, 8, 1, 8)])
def test_a_run_is_placed_to_fit_the_cores(monkeypatch, tmp_path, count, replicas, threads, at_once):
    """A replica per core, none with fewer than 32 of the 256 images of a batch, one thread in
    each operation (two gained nothing, measured), an operation of each replica at once."""
    fake_machine(monkeypatch, count)
    where = distribute.placement(settings_of(), distribute.ALONE, False, 0,
                                 cores.usable_cores(*fake_cgroup(tmp_path)))
    assert (where.kind, where.device) == ("mirrored", "cpu")
    assert (where.replicas, where.intra_op_threads, where.inter_op_threads) == (replicas, threads, at_once)
    assert where.record()["cores"] == count


def test_a_quota_of_2_on_64_cores_is_placed_as_2_cores(monkeypatch, tmp_path):
    fake_machine(monkeypatch, 64)
    usable = cores.usable_cores(*fake_cgroup(tmp_path, {"/": "200000 100000"}))
    where = distribute.placement(settings_of(), distribute.ALONE, False, 0, usable)
    assert (where.replicas, where.intra_op_threads, where.inter_op_threads, where.cores) == (2, 1, 2, 2)
    assert where.words() == "2 CPU replicas, 1 thread each"


def test_the_flags_override_the_choice_and_a_gpu_leaves_the_threads_to_tensorflow():
    tf_config = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'
    worker = distribute.this_worker("auto", tf_config)
    assert worker == distribute.Worker(1, 2, False)
    where = distribute.placement(settings_of(), worker, True, 0, 8)
    assert (where.kind, where.replicas, where.worker) == ("multi-worker", 1, worker)
    assert where.words() == "1 CPU replica, 1 thread each, worker 1 of 2"
    where = distribute.placement(settings_of("--cpu-replicas", "3", "--intra-op-threads", "1",
                                             "--inter-op-threads", "5"), distribute.ALONE, False, 0, 64)
    assert (where.replicas, where.intra_op_threads, where.inter_op_threads) == (3, 1, 5)
    assert distribute.placement(settings_of("--distribute", "none"), distribute.ALONE, False, 0, 2)[4:7] == (1, 1, 2)
    for gpus, kind in [(1, "none"), (4, "mirrored")]:
        where = distribute.placement(settings_of(), distribute.ALONE, False, gpus, 8)
        assert (where.kind, where.device, where.replicas, where.intra_op_threads) == (kind, "gpu", gpus, None)
    assert distribute.placement(settings_of(), distribute.ALONE, False, 4, 8).words() == "4 GPUs"


def test_prediction_is_sliced_for_the_cores():
    assert [cores.predict_slices(n, 1000) for n in (1, 2, 8, 64)] == [1, 2, 8, 8]
    assert cores.predict_slices(64, 100) == 3  # 32 images a slice at least


# ----------------------------------------------------------------------------
# A Python without what only POSIX has

# Run as `python PRELUDE SCRIPT ARGS...`: hides fcntl, os.fork, SIGKILL and the rest of what
# Windows lacks, and stands in for Windows' msvcrt.locking with POSIX's lockf (a lock of the
# same kind: on a file's bytes, held by the process, let go of when it ends however it ends),
# which plumbing/locks.py then takes.
WITHOUT_POSIX = textwrap.dedent("""
    import errno, os, runpy, select, signal, sys, types
    import subprocess, asyncio  # first: they take a module named msvcrt for a sign of Windows
    sys.modules["fcntl"] = None
    for module, name in ((os, "fork"), (os, "O_DIRECTORY"), (os, "sched_getaffinity"),
                         (signal, "SIGKILL"), (select, "poll")):
        delattr(module, name)
    if hasattr(os, "process_cpu_count"):  # Python 3.13's, made from sched_getaffinity where there
        os.process_cpu_count = os.cpu_count  # is one: elsewhere it is the machine's count
    msvcrt = types.ModuleType("msvcrt")
    msvcrt.LK_UNLCK, msvcrt.LK_NBLCK = 0, 2
    def locking(descriptor, mode, size):
        try:
            os.lockf(descriptor, os.F_TLOCK if mode == msvcrt.LK_NBLCK else os.F_ULOCK, size)
        except OSError:
            raise OSError(errno.EACCES, "Permission denied") from None  # what Windows says
    msvcrt.locking = locking
    sys.modules["msvcrt"] = msvcrt
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def without_posix(tmp_path, *args, wait=True):
    prelude = tmp_path / "without_posix.py"
    prelude.write_text(WITHOUT_POSIX)
    command = [sys.executable, str(prelude), os.path.join(REPO, "rnn_mnist.py"), *args]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.full
def test_without_posix_the_tool_helps_trains_refuses_a_held_run_evaluates_and_predicts(tmp_path, tiny_npz):
    done = without_posix(tmp_path, "--help")
    assert done.returncode == 0 and "--cpu-replicas" in done.stdout, done.stderr
    assert re.search(r"This process may use [1-9]\d* core\(s\)", " ".join(done.stdout.split()))
    logdir = str(tmp_path / "runs")
    common = ["--data", tiny_npz, "--logdir", logdir, "--units", "8", "--batch-size", "32",
              "--validation-size", "40"]
    first = without_posix(tmp_path, *common, "--run-name", "r", "--epochs", "1000", "--quiet", wait=False)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(logdir, "r", "model.keras")):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.1)
        second = without_posix(tmp_path, *common, "--resume", "r")
        assert second.returncode == 2 and second.stderr == (
            "rnn_mnist.py: error: run r is in use by another rnn_mnist process that trains or "
            "resumes it; wait for it to end\n")
        assert first.poll() is None  # undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert os.path.exists(os.path.join(logdir, "r", "rnn_mnist.lock"))  # left by the killed run
    resumed = without_posix(tmp_path, *common, "--resume", "r", "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run r at " in resumed.stdout and "test accuracy" in resumed.stdout
    assert json.load(open(os.path.join(logdir, "r", "metrics.json")))["test_images"] == 60
    evaluated = without_posix(tmp_path, "evaluate", "--data", tiny_npz, "--logdir", logdir, "--json")
    assert evaluated.returncode == 0 and json.loads(evaluated.stdout)["images"] == 60, evaluated.stderr
    predicted = without_posix(tmp_path, "predict", os.path.join(REPO, "examples", "three.png"),
                              "--logdir", logdir, "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["digit"] in range(10)


@pytest.mark.parametrize("posix", [True, False], ids=["posix", "without-sigkill"])
def test_the_watcher_of_a_forming_cluster_ends_a_worker_that_waits_too_long(tmp_path, posix):
    """The process that watches a worker wait for the others (no fork, no select on a pipe):
    silent once told the cluster formed; one line when the worker ended; after its time, it
    ends the worker (SIGKILL, or where there is none, what os.kill does on Windows) with one line."""
    watcher = os.path.join(REPO, "plumbing", "cluster_watch.py")
    prelude = tmp_path / "prelude.py"
    prelude.write_text("import runpy, signal, sys\n" + ("" if posix else "del signal.SIGKILL\n")
                       + "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")

    def watch(worker, seconds, said):
        done = subprocess.run([sys.executable, str(prelude), watcher, str(worker.pid), str(seconds), "1", "2"],
                              input=said, capture_output=True, timeout=30)
        return done.returncode, done.stderr.decode()

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert watch(worker, 30, b"formed") == (0, "")
    assert worker.poll() is None
    status, err = watch(worker, 30, b"")  # the pipe closed: the worker is gone
    assert status == 0 and err == ("rnn_mnist.py: worker 1 of 2 stopped (Ctrl-C, SIGTERM or a crash) "
                                   "while it waited for the others to join; nothing was trained or saved\n")
    started = time.monotonic()
    watching = subprocess.Popen([sys.executable, str(prelude), watcher, str(worker.pid), "0.5", "1", "2"],
                                stdin=subprocess.PIPE, stderr=subprocess.PIPE)  # told nothing
    assert worker.wait(timeout=30) == (-signal.SIGKILL if posix else -signal.SIGTERM)
    assert time.monotonic() - started < 20
    err = watching.communicate(timeout=30)[1].decode()
    assert err == ("rnn_mnist.py: error: worker 1 of 2 waited 0.5 s for the others and gives up: start "
                   "every worker, each with its TF_CONFIG, within --worker-wait of one another\n")


# ----------------------------------------------------------------------------
# Requirements for each platform

def requirement_lines(name):
    with open(os.path.join(REPO, name)) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("sys_platform, machine, build", [
    ("linux", "x86_64", "tensorflow-cpu"), ("win32", "AMD64", "tensorflow-cpu"),
    ("darwin", "arm64", "tensorflow"), ("linux", "aarch64", "tensorflow")])
def test_requirements_pick_one_tensorflow_build_for_each_platform(sys_platform, machine, build):
    from packaging.requirements import Requirement
    environment = {"sys_platform": sys_platform, "platform_machine": machine}
    chosen = [Requirement(line) for line in requirement_lines("requirements.txt")]
    chosen = [r.name for r in chosen if r.marker is None or r.marker.evaluate(environment)]
    assert [name for name in chosen if name.startswith("tensorflow-") or name == "tensorflow"] == [build]
    assert {"keras", "tensorboard", "tqdm", "matplotlib", "numpy"} <= set(chosen)


@pytest.mark.parametrize("sys_platform, machine, interpreters", [
    ("linux", "x86_64", ["ai-edge-litert", "tflite-micro"]), ("linux", "aarch64", ["ai-edge-litert"]),
    ("darwin", "arm64", ["ai-edge-litert"]), ("win32", "AMD64", ["ai-edge-litert"])])
def test_the_micro_requirements_ask_tflite_micro_only_where_it_has_builds(sys_platform, machine, interpreters):
    """pip download --platform found tflite-micro's wheels for Linux x86-64 only, LiteRT's for each."""
    from packaging.requirements import Requirement
    environment = {"sys_platform": sys_platform, "platform_machine": machine}
    chosen = [Requirement(line) for line in requirement_lines("requirements-micro.txt")]
    assert [r.name for r in chosen if r.marker is None or r.marker.evaluate(environment)] == interpreters


def test_the_gpu_requirements_are_the_same_but_for_tensorflow():
    gpu, cpu = requirement_lines("requirements-gpu.txt"), requirement_lines("requirements.txt")
    assert gpu[0] == "tensorflow[and-cuda]==2.21.*"
    assert gpu[1:] == [line for line in cpu if not line.startswith("tensorflow")]


def test_a_python_that_tensorflow_has_no_build_for_is_named_in_one_line():
    """pip cannot install TensorFlow 2.21 into Python 3.14; the script, run there, says why."""
    code = ("import runpy, sys\nsys.version_info = (3, 14, 0, 'final', 0)\n"  # as Python 3.14 says
            f"sys.argv = ['rnn_mnist.py']\nrunpy.run_path({os.path.join(REPO, 'rnn_mnist.py')!r}, "
            "run_name='__main__')\n")
    # -S leaves out site-packages: a Python where requirements.txt could not be installed
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("rnn_mnist.py: error: TensorFlow 2.21 has no build for Python 3.14 (")
    assert done.stderr.endswith("make the virtual environment with Python 3.10 to 3.13, for example: "
                                "python3.12 -m venv venv\n")
