#!/usr/bin/env python
"""Human audit of a committed version: draw a sample, review it in the browser, report precision.

    python pipelines/cli/audit.py sample --name round1 [--per-task 200] [--version N] [--seed S]
        [--rejects K] [--verify-failed K]
    python pipelines/cli/audit.py serve  --name round1 [--auditor alice] [--host 127.0.0.1] [--port 8765]
    python pipelines/cli/audit.py report --name round1 [--target-precision 0.95]

Everything lives under <output>/audits/<name>/ (local or s3://). `--output`, `--config` and key=value
overrides work as in the other tools. docs/quality.md explains the sampling and the statistics.
"""

from __future__ import annotations

import argparse
import getpass
import signal
import sys
import threading
from collections import Counter
from typing import Any

from pipelines.config import ConfigError, load_config
from pipelines.exits import run as run_cli
from pipelines.quality.store import AuditError, check_name
from pipelines.storage.fs import StorageError
from pipelines.storage.output import output_of


def _sample(args: argparse.Namespace, output: str, store: Any) -> int:
    from pipelines.quality.sample import draw_sample

    s = draw_sample(output, check_name("audit", args.name), store, args.per_task, args.version, args.seed,
                    args.rejects, args.verify_failed)
    by = Counter((it["task"], it["kind"]) for it in s["items"])
    print(f"audit: drew {len(s['items'])} pairs of version {s['version']} (seed {s['seed']}) into audit {args.name}")
    for (task, kind), n in sorted(by.items()):
        pop = s["population"][task][kind]
        print(f"  {task:<18} {kind:<7} {n:>5} of {pop}")
    print(f"next: python pipelines/cli/audit.py serve --name {args.name}")
    return 0


def _serve(args: argparse.Namespace, output: str, store: Any) -> int:
    from pipelines.quality.server import AuditApp, make_server

    auditor = check_name("auditor", args.auditor)
    app = AuditApp(output, check_name("audit", args.name), auditor, store)
    try:
        server = make_server(app, args.host, args.port)
    except OSError as exc:
        app.lock.release()
        raise AuditError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    stop = threading.Event()
    threading.Thread(target=app.heartbeat_forever, args=(stop,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    p = app.log.progress()
    host, port = server.server_address[:2]
    print(f"audit: reviewing {args.name} (version {app.sample['version']}, {p['total']} pairs, {p['done']} done) "
          f"as {auditor} at http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.server_close()
        app.lock.release()
    p = app.log.progress()
    print(f"audit: stopped; {p['done']}/{p['total']} pairs have a verdict from {auditor}")
    return 0


def _report(args: argparse.Namespace, output: str, store: Any) -> int:
    from pipelines.quality.report import render_text, write_report

    r, paths = write_report(output, check_name("audit", args.name), store, args.target_precision)
    print(render_text(r))
    print("wrote " + ", ".join(paths))
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="audit.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", help="output uri (default: the config's output.uri)")
    ap.add_argument("--config", action="append", default=[])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sample", help="draw a stratified, seeded sample of one version")
    p.add_argument("--name", required=True)
    p.add_argument("--per-task", type=int, default=200, help="accepted pairs per task (default 200)")
    p.add_argument("--version", type=int, help="manifest version (default: the latest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rejects", type=int, default=0, help="rejected pairs per task (false-reject estimate)")
    p.add_argument("--verify-failed", type=int, default=0,
                   help="pairs per task the verifier failed (verifier vs human agreement; not in the dataset)")
    p = sub.add_parser("serve", help="serve the review page")
    p.add_argument("--name", required=True)
    p.add_argument("--auditor", default=None, help="who reviews (default: the login name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p = sub.add_parser("report", help="precision, agreement and verifier-vs-human of an audit")
    p.add_argument("--name", required=True)
    p.add_argument("--target-precision", type=float, default=0.95, help="precision the verifier threshold must reach")
    for sp in sub.choices.values():
        sp.add_argument("overrides", nargs="*", help="config key=value overrides")
    return ap


def main(argv: list[str] | None = None) -> int:
    # The shared error layer (pipelines/exits.py): no traceback, the exit-code table, Ctrl-C hint.
    return run_cli("audit", lambda: _main(argv))


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "auditor", "x") is None:
        args.auditor = getpass.getuser() or "auditor"
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"audit: configuration error: {exc}", file=sys.stderr)
        return 2
    store, output = output_of(cfg, args.output)
    run = {"sample": _sample, "serve": _serve, "report": _report}[args.cmd]
    try:
        return run(args, output, store)
    except (AuditError, StorageError) as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
