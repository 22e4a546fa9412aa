"""Writes docs/flags.md, every command's flags, from the command line's own parsers:

    python docs/make_flags.py

tests/test_cli.py fails when the file and the parsers differ."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import rnn_mnist  # noqa: E402 (after the path above)
from plumbing import cli  # noqa: E402

SEE = {  # a flag's page, linked after its text
    "order": "[Other reading orders](reading-orders.md)",
    "distribute": "[More cores, GPUs and machines](machines.md)",
    "cpu_replicas": "[Performance](performance.md#performance)",
    "resume": "[Stop, crash, resume](resume.md)",
    "host": "[Draw a digit](serve.md)",
    "micro": "[On a microcontroller](micro.md)",
}


def reference():
    parsers = {command: cli.parser_of(command, rnn_mnist.RECIPE, rnn_mnist.RECURRENT_CELLS)
               for command in cli.COMMANDS}
    return cli.flag_reference(parsers, SEE)


if __name__ == "__main__":
    with open(os.path.join(REPO, "docs", "flags.md"), "w") as f:
        f.write(reference())
