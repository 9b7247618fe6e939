"""Workers on two hosts, one host cut off mid-job: the job finishes on the other, and when the cut-off
host comes back, nothing changes.

The hosts are network namespaces this test makes (as root), each joined to the test's own
namespace by a veth pair. Redis listens on the test's ends of the pairs (and on loopback for the
test itself); the test's own simulator listens on all of the test namespace's addresses for the
length of the test. The workers only ever use the veth addresses.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from api.app import create_app
from cli import procfile
from tests.helpers import (
    ApiClient,
    RedisServer,
    Simulator,
    assert_exact,
    customers,
    make_settings,
    progress,
    settings_env,
    wait_for,
)
from worker.store import keys

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                       reason="making network namespaces needs root and iproute2 (ip)"),
]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Host:
    """A network namespace joined to ours by a veth pair: ``gateway`` is our end, ``address`` its."""

    def __init__(self, net: int, n: int) -> None:
        suffix = uuid.uuid4().hex[:4]
        self.ns, self.outer, self.inner = f"cu{suffix}h{n}", f"cu{suffix}o{n}", f"cu{suffix}i{n}"
        self.gateway, self.address = f"10.{net}.{n}.1", f"10.{net}.{n}.2"

    def create(self) -> Host:
        ip("netns", "add", self.ns)
        ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        ip("link", "set", self.inner, "netns", self.ns)
        ip("addr", "add", f"{self.gateway}/24", "dev", self.outer)
        ip("link", "set", self.outer, "up")
        ip("-n", self.ns, "addr", "add", f"{self.address}/24", "dev", self.inner)
        ip("-n", self.ns, "link", "set", self.inner, "up")
        ip("-n", self.ns, "link", "set", "lo", "up")
        return self

    def cut(self) -> None:
        ip("link", "set", self.outer, "down")

    def mend(self) -> None:
        ip("link", "set", self.outer, "up")

    def destroy(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True)


class HostWorker:
    """The Procfile's worker line, run inside a host's namespace."""

    def __init__(self, host: Host, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.log = log_path.open("wb")
        command = procfile.procfile_commands()["worker"]
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, "bash", "-c", "exec " + command], env=procfile.process_env(env),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(procfile.PROCFILE.parent),
        )
        wait_for(lambda: b"ready." in log_path.read_bytes(), timeout=60, what=f"worker in {host.ns}", interval=0.2)

    def stop(self) -> None:
        procfile.stop(self.process)
        self.log.close()


@pytest.fixture
def hosts():
    net = random.randint(100, 250)
    made = [Host(net, 1).create(), Host(net, 2).create()]
    yield made
    for host in made:
        host.destroy()


def test_a_host_cut_off_mid_job_costs_one_lease_and_changes_nothing_when_it_returns(hosts, tmp_path):
    cut_off, other = hosts
    redis_server = RedisServer(tmp_path, bind=f"127.0.0.1 {cut_off.gateway} {other.gateway}").start()
    sim = Simulator(tmp_path, "--host", "0.0.0.0")
    workers: list[HostWorker] = []
    try:
        settings = make_settings(redis_server.url, sim.url, item_lease_seconds=6)
        api = ApiClient(create_app(settings))
        for n, host in enumerate(hosts):
            over = settings.with_overrides(redis_url=f"redis://{host.gateway}:{redis_server.port}/0",
                                           capillary_base_url=f"http://{host.gateway}:{sim.port}")
            workers.append(HostWorker(host, settings_env(over), tmp_path / f"worker-{n}.log"))
        sim.configure(latencyMs=5)
        job_id = api.submit(customers(1000, "HOST-" + uuid.uuid4().hex[:6])).get_json()["jobId"]
        wait_for(lambda: progress(api, job_id)["processedCount"] >= 200, timeout=60, what="200 items done")

        cut_off.cut()
        try:
            job = api.wait(job_id, timeout=120)  # finished by the other host alone
            assert_exact(job, 1000)
            assert len(sim.customers()) == 1000
        finally:
            cut_off.mend()

        # Back on the network. Its items stand down: either its keeper's first renewal on its return learns
        # that their leases are gone, or, when the other host took long enough to finish the job, they
        # found their leases unrenewed for most of a lease while it was cut off. Either way they write
        # nothing. A heartbeat well after the return means the keeper has renewed (and said so) since.
        store = redis.Redis.from_url(redis_server.url, decode_responses=True)
        returned_at = float(store.time()[0])
        member = f"{socket.gethostname()}:{workers[0].process.pid}"
        wait_for(lambda: (store.zscore(keys.FLEET, member) or 0) > returned_at + settings.item_lease_seconds / 4,
                 timeout=60, what="the returning host to renew its leases")
        log = workers[0].log_path
        taken = re.search(rb"(\d+) leases were taken away", log.read_bytes())
        stood_down = int(taken.group(1)) if taken else 1  # at least one: the host was mid-job
        wait_for(lambda: log.read_bytes().count(b"lease lost to another worker") >= stood_down,
                 timeout=60, what="every item of the returning host to stand down")
        after = progress(api, job_id)
        assert {k: after[k] for k in ("processedCount", "failureCount", "createdCount", "updatedCount")} == \
            {k: job[k] for k in ("processedCount", "failureCount", "createdCount", "updatedCount")}
        assert len(sim.customers()) == 1000
    finally:
        for w in workers:
            w.stop()
        sim.stop()
        redis_server.stop()
