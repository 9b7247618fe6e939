"""customer-upsert: run the whole stack locally, submit files, follow, list and cancel jobs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cli.api_client import ApiClient
from cli.batches import open_batch
from cli.errors import CliError
from cli.report import follow, jobs_table, summary
from worker.settings import Settings, SettingsError

EXIT_OK, EXIT_FAILURES, EXIT_PROBLEM, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = """\
exit codes:
  0    done; for `submit --wait`: every item succeeded
  1    `submit --wait`, `watch`: the job had failed or cancelled items; `doctor`: the store is unsafe
  2    usage, file or connection problem, or an error answer from the API
  130  interrupted by Ctrl-C (a submitted job keeps running)

Client commands read UPSERT_URL (default http://127.0.0.1:8000) and UPSERT_API_TOKEN."""


def _print_json(value: Any) -> int:
    print(json.dumps(value, indent=2))
    return EXIT_OK


def _hint(job_id: str, base_url: str) -> str:
    return (f"  follow it:  customer-upsert watch {job_id}   (or the dashboard, {base_url}/ui/)\n"
            f"  cancel it:  customer-upsert cancel {job_id}")


# -- commands --------------------------------------------------------------------------------------


def cmd_submit(client: ApiClient, args: argparse.Namespace) -> int:
    try:
        job = client.submit_batch(args.batch, skip_change_identifier=args.skip_change_identifier,
                                  dry_run=args.dry_run)
    except KeyboardInterrupt:
        print("\ninterrupted while sending; a job accepted meanwhile is listed by `customer-upsert jobs`",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return _accepted(client, job, args)


def cmd_run(client: ApiClient, args: argparse.Namespace) -> int:
    """Apply a finished dry run: the real job from its stored inputs."""
    job = client.run_dry_run(args.job)
    return _accepted(client, job, args)


def _accepted(client: ApiClient, job: dict, args: argparse.Namespace) -> int:
    """Tell that a job was accepted; with ``--wait``, follow it to its end and summarise it."""
    job_id = job["jobId"]
    what = "dry run" if job.get("dryRun") else "job"
    if not args.wait:
        print(f"{what} {job_id} accepted: {job['totalCount']:,} customers\n{_hint(job_id, client.base_url)}",
              file=sys.stderr)
        _print_json(job)
        return EXIT_OK
    print(f"{what} {job_id} accepted: {job['totalCount']:,} customers (Ctrl-C stops watching, not the job)",
          flush=True)
    return follow_to_summary(client, job_id, args.timeout)


def cmd_watch(client: ApiClient, args: argparse.Namespace) -> int:
    """The progress bar of a job submitted earlier (``--no-wait``, another terminal), then its summary."""
    return follow_to_summary(client, args.job, args.timeout)


def follow_to_summary(client: ApiClient, job_id: str, timeout: float) -> int:
    """The bar until the job ends, then the summary; the exit code says whether every item succeeded.
    Ctrl-C stops the watching, not the job, and says how to follow or cancel it."""
    try:
        job = follow(client, job_id, timeout)
    except KeyboardInterrupt:
        print(f"\njob {job_id} keeps running on the server.\n{_hint(job_id, client.base_url)}", file=sys.stderr,
              flush=True)
        return EXIT_INTERRUPTED
    print(summary(job))
    return EXIT_OK if job["failureCount"] == 0 else EXIT_FAILURES


def cmd_cancel(client: ApiClient, args: argparse.Namespace) -> int:
    job = client.job(args.job)
    if not job.get("finishedAt") and job["state"] != "CANCELLED":
        job = client.cancel(args.job)
        if job["state"] == "CANCELLED":
            print(f"job {args.job} cancelled: items not yet started end CANCELLED", flush=True)
            try:
                job = client.wait(args.job, timeout=args.timeout)
            except CliError:
                print(f"items in flight are still finishing; see `customer-upsert status {args.job}`")
                return EXIT_OK
            print(summary(job))
            return EXIT_OK
    if job.get("finishedAt"):
        print(f"job {args.job} had already finished ({job['state']}); nothing was cancelled")
        print(summary(job))
    else:
        print(f"job {args.job} was already cancelled; items in flight are still finishing")
    return EXIT_OK


def cmd_jobs(client: ApiClient, args: argparse.Namespace) -> int:
    jobs = client.jobs(state=args.state, limit=args.limit)
    print(jobs_table(jobs) if jobs else "no jobs" + (f" in state {args.state}" if args.state else ""))
    return EXIT_OK


def cmd_results(client: ApiClient, args: argparse.Namespace) -> int:
    out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    count = 0
    try:
        for item in client.results(args.job, failed=args.failed):
            out.write(json.dumps(item) + "\n")
            count += 1
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"wrote {count:,} items to {args.output}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="customer-upsert", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="run Redis, the simulator, the API, a worker and Flower on this machine")
    dev.add_argument("--submit", type=Path, metavar="FILE", help="submit FILE once the stack is up, print the result")
    dev.add_argument("--exit-after-submit", action="store_true", help="stop everything once FILE's job is printed")
    dev.add_argument("--host", default="127.0.0.1",
                     help="address the API and Flower listen on (default 127.0.0.1: this machine only)")
    dev.add_argument("--port", type=int, help="the API's port (default PORT or 8000, a free one if taken)")
    dev.add_argument("--flower-port", type=int, help="Flower's port (default 5555, a free one if taken)")
    dev.add_argument("--simulator-port", type=int, help="the simulator's port (default 8100, a free one if taken)")
    dev.add_argument("--keep-data", action="store_true",
                     help="keep jobs and metrics from one run to the next (default: each run starts empty)")

    def client_command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    submit = client_command("submit", "submit a JSON array, NDJSON or CSV file of customers (NDJSON and CSV are "
                                      "streamed)")
    submit.add_argument("file", type=Path)
    submit.add_argument("--skip-change-identifier", action="store_true")
    submit.add_argument("--dry-run", action="store_true",
                        help="validate and look up only, write nothing: what each customer would do; "
                             "`customer-upsert run JOB` applies it")
    submit.add_argument("--wait", action="store_true",
                        help="show a progress bar until the job ends, then a summary; exit 1 if any item failed")
    submit.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait at most (default a day)")

    run = client_command("run", "apply a finished dry run: start the real job from its stored inputs")
    run.add_argument("job", metavar="JOB_ID")
    run.add_argument("--wait", action="store_true",
                     help="show a progress bar until the job ends, then a summary; exit 1 if any item failed")
    run.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait at most (default a day)")

    client_command("status", "print a job's document (JSON)").add_argument("job", metavar="JOB_ID")
    watch = client_command("watch", "show a running job's progress bar until it ends, then the summary; "
                                    "exit 1 if any item failed")
    watch.add_argument("job", metavar="JOB_ID")
    watch.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait at most (default a day)")
    cancel = client_command("cancel", "cancel a job: items not yet started end CANCELLED")
    cancel.add_argument("job", metavar="JOB_ID")
    cancel.add_argument("--timeout", type=float, default=30, help="seconds to wait for items in flight (default 30)")
    jobs = client_command("jobs", "list your recent jobs, newest first")
    jobs.add_argument("--state", choices=("QUEUED", "RUNNING", "COMPLETED", "CANCELLED"))
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (1 to 100, default 20)")
    results = client_command("results", "print or save a job's per-customer results (NDJSON)")
    results.add_argument("job", metavar="JOB_ID")
    results.add_argument("--failed", action="store_true", help="only the failed (and cancelled) items, to resubmit")
    results.add_argument("-o", "--output", type=Path, metavar="FILE")

    client_command("doctor", "check the job store the API uses: eviction policy, persistence, version, memory")

    sub.add_parser("simulator", help="run the local stand-in for the v2 customer API", add_help=False)
    return parser


def cmd_doctor(client: ApiClient, args: argparse.Namespace) -> int:
    """The store as the API sees it (``/readyz``): exit 0 when it is fit, 1 with warnings."""
    store = client.request("GET", "/readyz").json()["store"]
    memory = (f"{store['usedMemory'] / 2**20:,.1f} MiB of {store['maxMemory'] / 2**20:,.0f} MiB"
              if store["maxMemory"] else f"{store['usedMemory'] / 2**20:,.1f} MiB, no maxmemory")
    print(f"Redis {store['version']}: {memory}; append-only file {'on' if store['appendOnly'] else 'off'}, "
          f"{store['replicas']} replicas")
    for warning in store["warnings"]:
        print(f"warning: {warning['message']}")
    if not store["warnings"]:
        print("the store is fit for accepted jobs")
    return EXIT_FAILURES if store["warnings"] else EXIT_OK


COMMANDS = {"submit": cmd_submit, "run": cmd_run, "watch": cmd_watch, "doctor": cmd_doctor, "cancel": cmd_cancel,
            "jobs": cmd_jobs, "results": cmd_results,
            "status": lambda client, args: _print_json(client.job(args.job))}


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "simulator":
        from simulator.cli import main as simulator_main

        return simulator_main(argv[1:]) or 0

    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "dev":
            from cli.devstack import DevOptions, run_dev

            options = DevOptions(host=args.host, port=args.port, flower_port=args.flower_port,
                                 simulator_port=args.simulator_port, keep_data=args.keep_data)
            return run_dev(settings, submit=args.submit, exit_after_submit=args.exit_after_submit, options=options)
        if args.command == "submit":
            args.batch = open_batch(args.file)  # a file problem is told before anything else
        # /readyz needs no token: doctor works without one
        token = settings.upsert_api_token or ("-" if args.command == "doctor" else "")
        client = ApiClient(settings.upsert_url, token)
        code = COMMANDS[args.command](client, args)
        sys.stdout.flush()  # a reader gone (`| head`) shows here, while it can still be handled
        return code
    except BrokenPipeError:
        # The reader (`| head -1`) has what it wanted: stop quietly, and keep Python's own flush at exit
        # from raising again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (CliError, SettingsError) as exc:
        print(f"customer-upsert: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    # `python -m cli.main`: run the module as imported, so cli.devstack raises the CliError caught here.
    from cli.main import main as imported_main

    raise SystemExit(imported_main())
