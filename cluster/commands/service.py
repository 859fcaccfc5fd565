"""`flowrouter serve | ticket | status | shutdown | config check`."""

from __future__ import annotations

import json
import sys

import httpx

from cluster.cli import CliError
from core.config import ConfigError, load_config

DEFAULT_URL = "http://127.0.0.1:8000"


def register(sub) -> None:
    p = sub.add_parser("serve", help="start the service (local Ray) and print its URL")
    p.add_argument("config", nargs="?", help="config YAML (default: configs/default.yaml)")
    p.add_argument("--port", type=int, help="HTTP port (overrides serve.port)")
    p.add_argument("--foreground", action="store_true", help="stay in the foreground until Ctrl-C")
    p.add_argument("--address", help="deploy onto an existing Ray cluster (e.g. 'auto') instead of a local one")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ticket", help="send a ticket to the running service and print the workflow")
    p.add_argument("text", help="ticket text: first line is the title, the rest the description")
    p.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    p.add_argument("--candidates", type=int, help="N for best-of-N")
    p.add_argument("--expert", help="force this expert")
    p.add_argument("--json", action="store_true", help="print the full JSON answer")
    p.set_defaults(func=cmd_ticket)

    p = sub.add_parser("status", help="health, map version and deployments of the running service")
    p.add_argument("--url", default=DEFAULT_URL)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("shutdown", help="stop the service started by `flowrouter serve`")
    p.add_argument("config", nargs="?")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_shutdown)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    c = csub.add_parser("check", help="validate a config file and everything it points to")
    c.add_argument("config", nargs="?")
    c.set_defaults(func=cmd_config_check)


def _load(path):
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def cmd_serve(args) -> int:
    from cluster import local

    _load(args.config)  # fail fast on a bad config, before any process starts
    if args.foreground:
        return local.run_foreground(args.config, args.port)
    if args.address:
        cfg = local.resolve_state_dir(_load(args.config))
        if args.port:
            cfg.serve.port = args.port
        local.deploy(cfg, local.prepare(cfg), address=args.address)
        print(f"deployed {cfg.serve.app_name} onto {args.address}; HTTP on port {cfg.serve.port}")
        return 0
    try:
        info = local.start_background(args.config, args.port)
    except (local.ServiceError, ValueError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    url = info["url"]
    print(f"\nFlowRouter is serving at {url}  (API docs: {url}/docs)\n")
    print("Send a ticket:")
    print(f"  flowrouter ticket 'db-01 disk 97% full, postgres cannot write' --url {url}")
    print(f"  curl -s {url}/v1/tickets -H 'content-type: application/json' \\")
    print("       -d '{\"title\": \"db-01 disk 97% full\", \"description\": \"postgres cannot write WAL\"}'")
    print("Stop it: flowrouter shutdown")
    return 0


def _request(method: str, url: str, **kw) -> httpx.Response:
    try:
        return httpx.request(method, url, timeout=kw.pop("timeout", 900), **kw)
    except httpx.ConnectError:
        raise CliError(f"no service answers at {url.split('/v1')[0].split('/healthz')[0]}; "
                       "start it with `flowrouter serve`") from None
    except httpx.HTTPError as exc:
        raise CliError(f"request failed: {exc}") from None


def _raise_for(r: httpx.Response) -> None:
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:300]
        raise CliError(f"HTTP {r.status_code}: {detail}")


def cmd_ticket(args) -> int:
    title, _, description = args.text.strip().partition("\n")
    if not title.strip():
        raise CliError("the ticket text is empty")
    params = {}
    if args.candidates:
        params["candidates"] = args.candidates
    if args.expert:
        params["expert"] = args.expert
    r = _request("POST", f"{args.url}/v1/tickets", json={"title": title, "description": description},
                 params=params)
    _raise_for(r)
    result = r.json()
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(render_result(result))
    return 0


def render_result(result: dict) -> str:
    from core.workflow import Workflow

    wf = Workflow(steps=result["workflow"]["steps"], edges=result["workflow"]["edges"])
    best = result["candidates"][result["best_index"]]["scores"]
    lines = [
        f"ticket {result['ticket_id']}",
        f"task: {result['task']} (confidence {result['confidence']:.2f}, decided by {result['decision_path']})",
        f"expert: {result['expert']}   map: {result['map_version']}   "
        f"candidates: {len(result['candidates'])}   best score: {best['overall']:.2f}/5",
        "",
        wf.to_text(),
        "",
        "Mermaid:",
        result["workflow"]["mermaid"],
        "",
        "timings (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in result["timings_ms"].items()),
    ]
    return "\n".join(lines)


def cmd_status(args) -> int:
    r = _request("GET", f"{args.url}/healthz", timeout=10)
    _raise_for(r)
    h = r.json()
    print(f"status: {h['status']} at {args.url}")
    print(f"map version: {h['map_version']}")
    print(f"experts: {', '.join(h['experts'])}")
    print(f"tasks: {', '.join(h['tasks'])}")
    return 0


def cmd_shutdown(args) -> int:
    from cluster import local

    cfg = local.resolve_state_dir(_load(args.config))
    if args.port:
        cfg.serve.port = args.port
    if local.stop_background(cfg):
        print(f"stopped the service on port {cfg.serve.port}")
        return 0
    raise CliError(f"no service started by `flowrouter serve` is recorded for port {cfg.serve.port}")


def cmd_config_check(args) -> int:
    cfg = _load(args.config)
    try:
        from core.task_map import TaskMap
        from router.examples import load_examples, load_tasks

        tasks = load_tasks(cfg.tasks.tasks)
        examples = load_examples(cfg.tasks.examples)
        TaskMap.load(cfg.map).check([t.name for t in tasks], [e.name for e in cfg.experts])
    except (ValueError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    print(f"{cfg.source}: OK — {len(tasks)} tasks, {len(examples)} labeled examples, "
          f"{len(cfg.experts)} experts ({', '.join(e.name for e in cfg.experts)}), map {cfg.map}")
    return 0
