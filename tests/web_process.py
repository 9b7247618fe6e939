"""The API as the Procfile's `web` line starts it (gunicorn), for tests that need a real HTTP server:
the command line's subprocess tests and the browser tests. A test module imports
``web_url_fixture`` to have the ``web_url`` fixture. :class:`WebMemory` reads what its workers hold
(the tests and benches that show the intake and the export stream)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from cli import procfile
from tests.helpers import free_port, settings_env, wait_for
from worker.settings import Settings


@pytest.fixture(scope="module", name="web_url")
def web_url_fixture(settings, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    env = settings_env(settings) | {"PORT": str(port)}
    log_path = tmp_path_factory.mktemp("web") / "web.log"
    with log_path.open("wb") as log:
        process = procfile.start("web", env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: requests.get(url + "/readyz", timeout=1).ok, timeout=60,
                     what=f"gunicorn from the Procfile (log: {log_path})")
            yield url
        finally:
            procfile.stop(process)


class WebMemory:
    """The peak resident memory of the web process's gunicorn workers (VmHWM), from a mark on: what the
    requests handled since then needed at most, whatever the body's size."""

    def __init__(self, master_pid: int) -> None:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        self.workers = [int(pid) for pid in children]

    def mark(self) -> None:
        """Reset the peaks: from now on they are the coming requests' (needs write access to /proc)."""
        for pid in self.workers:
            Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peak(self) -> int:
        return max(self._field(pid, "VmHWM:") for pid in self.workers)

    def resident(self) -> int:
        return max(self._field(pid, "VmRSS:") for pid in self.workers)

    @staticmethod
    def _field(pid: int, name: str) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1]) * 1024
        return 0


@contextmanager
def web_process(folder: Path, settings: Settings, **env: str) -> Iterator[tuple[str, WebMemory]]:
    """The Procfile's web line (gunicorn) on a free port, with ``settings`` and ``env`` over them, until
    the block ends: its URL, and its workers' memory."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (folder / "web.log").open("wb") as log:
        process = procfile.start("web", settings_env(settings) | {"PORT": str(port), **env}, stdout=log,
                                 stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: requests.get(url + "/readyz", timeout=1).ok, timeout=60,
                     what=f"gunicorn from the Procfile (log: {folder / 'web.log'})")
            yield url, WebMemory(process.pid)
        finally:
            procfile.stop(process)


def big_job_limits(items: int, body_bytes: int) -> dict[str, str]:
    """The two settings the README names for a job of a million profiles, raised to fit this one."""
    return {"MAX_ITEMS_PER_JOB": str(items), "MAX_BODY_BYTES": str(2 * body_bytes)}
