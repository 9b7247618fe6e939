"""Running the Procfile's processes, as ``customer-upsert dev`` and the tests do.

The Procfile is the single description of how each process starts; running its lines
verbatim (through ``bash -c``, with the package's ``bin`` first on PATH) is what keeps it honest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

PROCFILE = Path(__file__).resolve().parents[1] / "Procfile"


def procfile_commands(path: Path = PROCFILE) -> dict[str, str]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run customer-upsert from a checkout of the repository")
    commands = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def process_env(overrides: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start(name: str, env: dict[str, str], *, stdout=None, stderr=None, path: Path = PROCFILE) -> subprocess.Popen:
    """Start one Procfile process in its own process group (so stopping it stops its children)."""
    command = procfile_commands(path)[name]
    return subprocess.Popen(
        ["bash", "-c", "exec " + command], env=process_env(env), stdout=stdout, stderr=stderr,
        start_new_session=True, cwd=str(path.parent),
    )


def stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """TERM the process group, then KILL whatever is still there after ``timeout``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(5)
