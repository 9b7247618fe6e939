"""The API as the Procfile's `web` line starts it (gunicorn), for tests that need a real HTTP server:
the command line's subprocess tests and the browser tests. A test module imports
``web_url_fixture`` to have the ``web_url`` fixture."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import requests

from cli import procfile
from tests.helpers import free_port, settings_env, wait_for


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
