"""`make demo`: every registered study's demo run, small and offline, one after the other.

``python -m entrainment_cli.demo`` runs them (stopping at the first failure);
``--print`` only lists the commands.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from .studies import STUDIES


def commands() -> list[tuple[dict[str, str], list[str]]]:
    """(extra environment, entrain arguments) of every demo run, in registry order."""
    return [
        (dict(entry.demo_env), [*entry.name.split(), *args])
        for entry in STUDIES
        for args in entry.demo
    ]


def main(argv: list[str]) -> int:
    for env, args in commands():
        line = " ".join([*(f"{k}={v}" for k, v in env.items()), "entrain", *map(shlex.quote, args)])
        print(line, flush=True)
        if "--print" in argv:
            continue
        done = subprocess.run(
            [sys.executable, "-m", "entrainment_cli", *args], env={**os.environ, **env}
        )
        if done.returncode:
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
