"""``search dashboard``: optuna-dashboard on a study's storage, with its notes and pictures."""

from __future__ import annotations

import argparse
import contextlib
import sys

from search.commands import arguments
from training import SearchServiceError

HELP = "serve optuna-dashboard on a study, with each trial's note and pictures"
SHARED = ("storage", "artifacts")
EXAMPLES = """examples:
  search dashboard --study lr-sweep
  search dashboard --study lr-sweep --host 0.0.0.0 --port 8080
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=arguments.count(0, 65535), default=8080, help="port to serve on (default 8080)")


# The storage's connections the dashboard keeps: one for each request it serves at once, up to this
# (a request past it waits for one). benchmarks/dashboard_load.py at 10,000 trials: the pool is not
# what limits a page load there (1 tab: 29-34 s on pools of 3, 8 and 16); 8 polled faster than 3 at 4 tabs.
DASHBOARD_POOL = 8


def take_action(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from search.store import load_existing, open_storage, resolve_storage_url, study_id

    storage = open_storage(resolve_storage_url(args.storage), pool=DASHBOARD_POOL)
    study = load_existing(storage, args.study)
    app = optuna_dashboard.wsgi(storage, artifact_store=arguments.artifact_store(args))
    try:
        server = serving(args.host, args.port, app)
    except OSError as error:  # the port is taken, or the address is not this machine's
        raise SearchServiceError(
            f"cannot serve the dashboard on {args.host}:{args.port}: {error.strerror}; give another --port or --host"
        ) from None
    where = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address in a URL
    page = f"http://{where}:{server.server_port}/dashboard/studies/{study_id(study, storage)}"
    print(f"dashboard for '{study.study_name}': {page}", file=sys.stderr)
    with server, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it; nothing to mark
        server.serve_forever()
    return 0


def serving(host: str, port: int, app):
    """The wsgiref server optuna-dashboard's own command uses, a thread for each request (a page's
    slow first load does not hold up the other tabs' polls), bound to ``host`` and ``port``."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True  # Ctrl-C does not wait for a browser's open request

    return make_server(host, port, app, server_class=Server)
