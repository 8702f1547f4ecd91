"""The `optimem` command: serve, worker, mcp, demo, lab, export, import."""
from __future__ import annotations

import argparse
import logging
import os
import sys


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from optimem.settings import Settings

    settings = Settings.from_env()
    settings.worker = settings.worker and not args.no_worker  # OPTIMEM_WORKER=0 and --no-worker both hold
    # Logging is ours (configured in main: text or JSON lines with request id, tenant, session); the
    # access lines come from optimem.access, so uvicorn's own access log is off.
    level = args.log_level.upper()
    for name in ("uvicorn", "uvicorn.error", "optimem.access"):
        logging.getLogger(name).setLevel(level)
    # SIGTERM: stop accepting, give in-flight requests OPTIMEM_SHUTDOWN_S, then close the memory
    # (worker, then the embedded Redis with a final save). Every acknowledged turn is in Redis already.
    common = dict(host=args.host, port=args.port, log_config=None, access_log=False,
                  timeout_graceful_shutdown=max(0.1, settings.shutdown_s))
    if args.workers > 1:
        return serve_processes(args, settings, common)

    from optimem.api.app import create_app
    from optimem.memory.service import Memory

    memory = Memory(settings)
    where = memory.settings.redis_url or f"embedded Redis under {memory.settings.data_dir}"
    print(f"optimem: store = {where}; backend = {memory.settings.backend}; docs at http://{args.host}:{args.port}/docs",
          file=sys.stderr)
    uvicorn.run(create_app(memory), **common)


def serve_processes(args: argparse.Namespace, settings, common: dict) -> None:
    """``serve --workers N``: uvicorn starts N processes that share the listening socket; each builds
    its own Memory from the environment (``process_app``). They must share one Redis, so the embedded
    one is started here, once, handed down as OPTIMEM_REDIS_URL and stopped (with its save) after
    the last child has exited. Each child runs its own model worker (the job stream is a consumer
    group) unless --no-worker / OPTIMEM_WORKER=0."""
    import uvicorn

    from optimem.memory.redis_server import EmbeddedRedis
    from optimem.settings import as_env

    server = None
    if not settings.redis_url:
        server = EmbeddedRedis(settings.data_dir, settings.redis_maxmemory).start()
        os.environ.update(as_env(redis_url=f"unix://{server.socket}"))
    os.environ.update(as_env(worker=settings.worker))
    where = settings.redis_url or f"embedded Redis under {settings.data_dir}"
    print(f"optimem: store = {where}; {args.workers} processes; backend = {settings.backend}; "
          f"docs at http://{args.host}:{args.port}/docs", file=sys.stderr)
    try:
        # The supervisor kills a child that misses a 5 s health ping (its default); a busy child on a
        # small machine can, and a kill drops its in-flight requests: allow 30 s.
        uvicorn.run("optimem.api.cli:process_app", factory=True, workers=args.workers,
                    log_level=args.log_level.lower(), timeout_worker_healthcheck=30, **common)
    finally:
        if server is not None:
            server.stop()


def process_app():
    """The app of one ``serve --workers N`` process. Children are spawned fresh, so logging is set up
    again here; uvicorn has already set its loggers to --log-level, and optimem.access follows."""
    from optimem.api.app import create_app
    from optimem.api.metrics import configure_logging
    from optimem.settings import Settings

    settings = Settings.from_env()
    configure_logging(settings.log, settings.log_format)
    level = logging.getLogger("uvicorn.error").level
    for name in ("uvicorn", "optimem.access"):
        logging.getLogger(name).setLevel(level)
    return create_app()


def worker(args: argparse.Namespace) -> None:
    from optimem.memory.service import Memory
    from optimem.settings import Settings

    settings = Settings.from_env(worker=False)
    if not settings.redis_url:
        print("optimem worker: OPTIMEM_REDIS_URL is not set; using the embedded Redis under "
              f"{settings.data_dir} (only useful on the machine that serves)", file=sys.stderr)
    memory = Memory(settings).open()
    from optimem.memory.jobs import Worker, batch_for

    w = Worker(memory.store.r, memory.handle_job, batch=batch_for(settings.worker_batch, memory.encodes()))
    print(f"optimem worker {w.name}: backend {settings.backend}, waiting for jobs", file=sys.stderr)
    sweeper = memory.sweeping()     # time-based curves re-tiered while their sessions are left alone
    try:
        w.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if sweeper:
            sweeper.stop()
        memory.close(stop_server=False)


def mcp(args: argparse.Namespace) -> None:
    """An MCP server on stdin/stdout, over the embedded memory (the data directory and Redis that
    `optimem serve` uses) or, with --url, over a running service through optimem.Client."""
    import signal

    from optimem.api.mcp_server import Caller, server
    from optimem.api.verbs import Embedded

    signal.signal(signal.SIGTERM, signal.default_int_handler)   # closes the memory as Ctrl-C does
    if args.url:
        from optimem.api.client import Client

        with Client(args.url, api_key=args.api_key) as client:
            print(f"optimem mcp: stdio, memory at {args.url}", file=sys.stderr)
            caller = Caller(client)
            return _run_stdio(server(lambda ctx: caller))
    from optimem.memory.service import Memory
    from optimem.settings import Settings

    memory = Memory(Settings.from_env()).open()
    where = memory.settings.redis_url or f"embedded Redis under {memory.settings.data_dir}"
    print(f"optimem mcp: stdio, store = {where}, tenant {args.tenant!r}", file=sys.stderr)
    caller = Caller(Embedded(memory, args.tenant))
    try:
        _run_stdio(server(lambda ctx: caller))
    finally:
        memory.close()


def _run_stdio(mcp_server) -> None:
    import anyio

    from optimem.api.mcp_server import serve_stdio

    try:
        anyio.run(serve_stdio, mcp_server)
    except KeyboardInterrupt:
        pass


def demo(args: argparse.Namespace) -> None:
    from optimem.api.demo import run

    run(url=args.url, turns=args.turns, out=args.out, curve=args.curve, wait=args.wait)


def export(args: argparse.Namespace) -> None:
    """A session out as JSON Lines (to a file or stdout), with a progress bar on stderr."""
    from tqdm import tqdm

    out = open(args.output, "wb") if args.output else sys.stdout.buffer
    try:
        with tqdm(unit=" turns", desc=f"export {args.session}", file=sys.stderr, disable=args.quiet) as bar:
            if args.url:
                from optimem.api.client import Client

                with Client(args.url, api_key=args.api_key) as client:
                    bar.total = client.session(args.session).turns + 2
                    client.export_session(args.session, out, progress=bar.update)
            else:
                from optimem.memory import transfer

                with _local() as memory:
                    bar.total = memory.session(args.session, tenant=args.tenant).turns + 2
                    for line in transfer.export(memory, args.session, tenant=args.tenant):
                        out.write(line)
                        bar.update(1)
    finally:
        if args.output:
            out.close()


def import_(args: argparse.Namespace) -> None:
    """An export back in (checked whole first: a file cut short or edited imports nothing)."""
    import json

    from tqdm import tqdm

    with open(args.file, "rb") as f:
        try:
            total = int(json.loads(f.readline()).get("turns", 0)) + 2
        except (ValueError, AttributeError):
            total = None
    with tqdm(total=total, unit=" turns", desc=f"import {args.file}", file=sys.stderr, disable=args.quiet) as bar:
        if args.url:
            from optimem.api.client import Client

            with Client(args.url, api_key=args.api_key) as client:
                done = client.import_session(args.file, args.session, progress=bar.update)
        else:
            from optimem.memory import transfer

            with _local() as memory:
                done = transfer.import_file(memory, args.file, args.session, tenant=args.tenant,
                                            progress=bar.update)
    print(f"imported session {done.id}: {done.turns} turns, {done.pages} pages", file=sys.stderr)


def _local():
    from optimem.memory.service import Memory
    from optimem.settings import Settings

    return Memory(Settings.from_env(worker=False))


def lab(args: argparse.Namespace) -> None:
    from optimem.memory.lab import main as lab_main

    lab_main(args.lab_args)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lab"]:  # REMAINDER below can't pass on options that come first (`optimem lab --quick`)
        return lab(argparse.Namespace(lab_args=argv[1:]))
    parser = argparse.ArgumentParser(prog="optimem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the API (embedded Redis unless OPTIMEM_REDIS_URL is set)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1,
                   help="API processes on the one port (embedded Redis: started once and shared)")
    p.add_argument("--no-worker", action="store_true", help="don't run a model worker in-process (in any of them)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=serve)

    p = sub.add_parser("worker", help="consume model jobs from the Redis stream")
    p.set_defaults(func=worker)

    p = sub.add_parser("mcp", help="an MCP server on stdio for agents (Claude Desktop, Claude Code, ...)",
                       description="Memory tools for agents over MCP on stdin/stdout: remember, recall, context, "
                                   "sessions, forget_session. Embedded by default (OPTIMEM_DATA_DIR, the same store "
                                   "as `optimem serve`); --url for a running optimem service.")
    p.add_argument("--url", help="a running optimem service (e.g. http://127.0.0.1:8000); default: embedded")
    p.add_argument("--api-key", help="its API key, when it has OPTIMEM_API_KEYS (the key decides the tenant)")
    p.add_argument("--tenant", default="default", help="embedded only: whose sessions (default: 'default', "
                                                        "what `optimem serve` uses without API keys)")
    p.set_defaults(func=mcp)

    p = sub.add_parser("demo", help="replay a real conversation through the service and show what happened")
    p.add_argument("--url", help="a running optimem (default: in-process, embedded Redis)")
    p.add_argument("--turns", type=int, default=600)
    p.add_argument("--out", default="demo-pages", help="folder for the page images")
    p.add_argument("--curve", default="default")
    p.add_argument("--wait", type=float, default=600, help="seconds to wait for the reader to finish")
    p.set_defaults(func=demo)

    for name, helptext in (("export", "write a session out as JSON Lines"),
                           ("import", "build a session from an export")):
        p = sub.add_parser(name, help=f"{helptext} (in-process over OPTIMEM_REDIS_URL or the embedded Redis, "
                                      "or --url a running service)")
        if name == "export":
            p.add_argument("session")
            p.add_argument("-o", "--output", help="file to write (default: stdout)")
        else:
            p.add_argument("file")
            p.add_argument("--session", help="the new session's id (default: the exported one's)")
        p.add_argument("--url", help="a running optimem (default: in-process)")
        p.add_argument("--api-key", help="with --url: its API key, when it has OPTIMEM_API_KEYS")
        p.add_argument("--tenant", default="default", help="in-process: the tenant (over HTTP the key decides)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=export if name == "export" else import_)

    p = sub.add_parser("lab", help="forgetting-curve lab (optimem lab --help)", add_help=False)
    p.add_argument("lab_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lab)

    args = parser.parse_args(argv)
    from optimem.settings import Settings

    from optimem.api.metrics import configure_logging

    try:
        settings = Settings.from_env()
    except ValueError as exc:   # a malformed OPTIMEM_* variable: say which, and stop before anything starts
        raise SystemExit(f"optimem: {exc}") from None
    configure_logging(settings.log, settings.log_format)
    args.func(args)


if __name__ == "__main__":
    main()
