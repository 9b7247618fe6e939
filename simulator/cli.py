"""Command line: ``python -m simulator --port 8100 ...``, served by gunicorn.

gunicorn's threaded worker, one process (the customers, faults and call log live in it), keeps connections
alive as the real API's load balancers do. Werkzeug's development server closed every connection after its
answer: each call then paid a TCP connection and a thread of its own, on both sides, which is not what a
client of the real API pays, and the simulator's CPU per call, which the tests and bench/ share the machine
with, was about a fifth higher.
"""

from __future__ import annotations

import argparse
import logging
import os

from gunicorn.app.base import BaseApplication

from .app import create_app
from .config import NOT_FOUND_STATUSES, SimulatorConfig, parse_rate_limits
from .customers import LOOKUP_TYPES

CREDENTIAL_ENV = {
    "till": "SIMULATOR_TILL",
    "password": "SIMULATOR_PASSWORD",
    "oauth_key": "SIMULATOR_OAUTH_KEY",
    "oauth_secret": "SIMULATOR_OAUTH_SECRET",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Local stand-in for Capillary's v2 customer API. With no till and no OAuth key "
        "configured (flags or SIMULATOR_* env), every request is accepted without authentication.",
    )
    parser.add_argument("--host", default=None, help="address to listen on (env SIMULATOR_HOST; 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--db", default=":memory:", help="SQLite file (default: in memory)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="mean latency added to each v2 call")
    parser.add_argument(
        "--latency-jitter-ms",
        type=float,
        default=None,
        help="uniform +- spread around the mean (default: half the mean)",
    )
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of v2 calls answered 503")
    parser.add_argument("--error-521-rate", type=float, default=0.0, help="share of v2 calls answered 521")
    parser.add_argument("--hang-rate", type=float, default=0.0, help="share of v2 calls that hang first")
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    parser.add_argument(
        "--rate-limit-rps",
        type=float,
        default=0.0,
        help="requests per second for all v2 calls together (0: no limit)",
    )
    parser.add_argument(
        "--rate-limits",
        type=parse_rate_limits,
        default={},
        help='per-endpoint requests per minute, e.g. "add=600,update=3000"',
    )
    parser.add_argument("--not-found-status", type=int, choices=NOT_FOUND_STATUSES, default=400)
    parser.add_argument(
        "--primary-identifier",
        choices=LOOKUP_TYPES,
        default=None,
        help="dual eligibility: only this identifier type is unique and finds a customer (default: off)",
    )
    parser.add_argument("--till", help="Basic auth till code (env SIMULATOR_TILL)")
    parser.add_argument("--password", help="Basic auth password (env SIMULATOR_PASSWORD)")
    parser.add_argument("--oauth-key", help="OAuth client key (env SIMULATOR_OAUTH_KEY)")
    parser.add_argument("--oauth-secret", help="OAuth client secret (env SIMULATOR_OAUTH_SECRET)")
    parser.add_argument("--token-ttl", type=float, default=300.0, help="OAuth token lifetime in seconds")
    parser.add_argument("--seed", type=int, default=None, help="random seed for the faults")
    return parser


def config_from_args(args: argparse.Namespace, environ=os.environ) -> SimulatorConfig:
    credentials = {
        name: getattr(args, name) or environ.get(var) or None for name, var in CREDENTIAL_ENV.items()
    }
    return SimulatorConfig(
        host=args.host or environ.get("SIMULATOR_HOST") or "127.0.0.1",
        port=args.port,
        db=args.db,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        error_rate=args.error_rate,
        error_521_rate=args.error_521_rate,
        hang_rate=args.hang_rate,
        hang_seconds=args.hang_seconds,
        rate_limit_rps=args.rate_limit_rps,
        rate_limits=args.rate_limits,
        not_found_status=args.not_found_status,
        primary_identifier=args.primary_identifier,
        token_ttl_seconds=args.token_ttl,
        seed=args.seed,
        till=credentials["till"],
        password=credentials["password"],
        oauth_key=credentials["oauth_key"],
        oauth_secret=credentials["oauth_secret"],
    ).validate()


class _Server(BaseApplication):
    """gunicorn, configured here and nowhere else (no config file, no ``GUNICORN_CMD_ARGS``)."""

    #: Calls answered at once: enough for every test's and bench's clients, hung answers included.
    THREADS = 1024
    #: How long an idle connection stays open; the real API's load balancers keep theirs about a minute.
    KEEPALIVE_SECONDS = 60

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        super().__init__()

    def load_config(self) -> None:
        for name, value in {
            "bind": f"{self.config.host}:{self.config.port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.THREADS,
            "worker_connections": 4 * self.THREADS,
            "keepalive": self.KEEPALIVE_SECONDS,
            "timeout": 0,  # a hung answer (the hang fault) must not get the worker killed
            "graceful_timeout": 1,  # stopping does not wait for hung answers
            "loglevel": "warning",
        }.items():
            self.cfg.set(name, value)

    def load(self):
        # In the worker process, after the fork: the SQLite store is opened where it is used.
        app = create_app(self.config)
        print(f"simulator listening on http://{self.config.host}:{self.config.port}", flush=True)
        return app


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _Server(config).run()
    return 0
