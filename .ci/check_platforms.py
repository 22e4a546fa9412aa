"""Does `pip install -r requirements.txt` resolve on every platform the README names? Asks
pip's resolver, from this machine, for each platform and Python version, what it would
install there, and prints a table (exit status 1 when any does not resolve).

    python .ci/check_platforms.py                       # all of them, requirements.txt
    python .ci/check_platforms.py --python 3.13 --requirements requirements-gpu.txt

pip's --platform picks the wheels of another platform, but evaluates a requirement's
environment markers for this one; so each file's markers are evaluated here for the target
(with `packaging`, which pip itself uses) and only the lines that apply there are given
to `pip install --dry-run --only-binary=:all: --platform ... --python-version ...`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from packaging.requirements import Requirement

# name: (pip's platform tags, the markers' sys_platform, platform_machine, platform_system)
PLATFORMS = {
    "linux-x86_64": (["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                      "manylinux2014_x86_64"], "linux", "x86_64", "Linux"),
    "linux-aarch64": (["manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                       "manylinux2014_aarch64"], "linux", "aarch64", "Linux"),
    "macos-arm64": (["macosx_14_0_arm64", "macosx_13_0_arm64", "macosx_12_0_arm64",
                     "macosx_11_0_arm64"], "darwin", "arm64", "Darwin"),
    "windows-x86_64": (["win_amd64"], "win32", "AMD64", "Windows"),
}
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def lines_for(path, platform, python):
    """The requirements of `path` (a plain requirements file) whose markers hold there."""
    _, sys_platform, machine, system = PLATFORMS[platform]
    environment = {"sys_platform": sys_platform, "platform_machine": machine,
                   "platform_system": system, "os_name": "nt" if system == "Windows" else "posix",
                   "python_version": python, "python_full_version": python + ".0"}
    kept = []
    with open(path) as f:
        for line in f:
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                requirement = Requirement(line)
                if requirement.marker is None or requirement.marker.evaluate(environment):
                    requirement.marker = None
                    kept.append(str(requirement))
    return kept


def resolved(requirements, platform, python):
    """{name: version} that pip would install there, or the error it gave."""
    tags = [arg for tag in PLATFORMS[platform][0] for arg in ("--platform", tag)]
    with tempfile.TemporaryDirectory() as scratch:
        report = os.path.join(scratch, "report.json")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
             "--only-binary=:all:", "--target", os.path.join(scratch, "t"), *tags,
             "--python-version", python, "--report", report, *requirements],
            capture_output=True, text=True)
        if done.returncode:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            return (errors or [done.stderr.strip()[-300:]])[-1]
        with open(report) as f:
            return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                    for item in json.load(f)["install"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requirements", default="requirements.txt")
    parser.add_argument("--platform", nargs="+", choices=PLATFORMS, default=list(PLATFORMS))
    parser.add_argument("--python", nargs="+", default=list(PYTHONS))
    args = parser.parse_args()
    failed = 0
    for platform in args.platform:
        for python in args.python:
            requirements = lines_for(args.requirements, platform, python)
            got = resolved(requirements, platform, python)
            if isinstance(got, str):
                failed += 1
                print(f"{platform:15} Python {python:5} FAILS: {got}")
                continue
            tensorflow = next(f"{n} {v}" for n, v in got.items() if n in ("tensorflow", "tensorflow-cpu"))
            print(f"{platform:15} Python {python:5} {tensorflow}, keras {got['keras']}, numpy "
                  f"{got['numpy']}: {len(got)} packages")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
