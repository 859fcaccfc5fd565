"""`flowrouter serve | ticket | status | shutdown | config check`."""

from __future__ import annotations

import json
import os
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
    p.add_argument("--follow", action="store_true", help="submit asynchronously and print each status change "
                                                         "with its elapsed time (on stderr), then the result")
    p.add_argument("--api-key", default=os.environ.get("FLOWROUTER_API_KEY"),
                   help="API key with the ticket role (default: $FLOWROUTER_API_KEY; not needed in open mode)")
    p.add_argument("--no-mermaid", action="store_true", help="leave the Mermaid source out of the output")
    p.add_argument("--ascii", action="store_true", help="plain ASCII boxes (default: Unicode when the terminal "
                                                         "supports it)")
    p.set_defaults(func=cmd_ticket)

    p = sub.add_parser("status", help="health, map version, experts, queue and webhooks of the running service")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--api-key", default=os.environ.get("FLOWROUTER_API_KEY"),
                   help="API key with the ticket role, for the queue numbers (default: $FLOWROUTER_API_KEY)")
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

    cfg = _load(args.config)  # fail fast on a bad config, before any process starts
    from deployments.auth import check_config

    try:
        check_config(cfg.auth, cfg.serve.host)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if cfg.auth.mode == "open":
        print("WARNING: auth.mode is open: no API keys, every caller is admin (local development only; "
              "set auth.mode: keys and run `flowrouter keys new` for anything shared)", file=sys.stderr)
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
    print(f"\nFlowRouter is serving at {url}  (console: {url}/  API docs: {url}/docs)\n")
    auth_header = ""
    if cfg.auth.mode == "keys":
        auth_header = " -H \"Authorization: Bearer $FLOWROUTER_API_KEY\""
        print("API keys are required: create one with `flowrouter keys new NAME --role ticket` and export it "
              "as FLOWROUTER_API_KEY.")
    print("Send a ticket:")
    print(f"  flowrouter ticket 'db-01 disk 97% full, postgres cannot write' --url {url}")
    print(f"  curl -s {url}/v1/tickets -H 'content-type: application/json'{auth_header} \\")
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
        hint = {401: " (pass --api-key or set FLOWROUTER_API_KEY)", 403: " (this key lacks the role)",
                429: f" (retry after {r.headers.get('retry-after', '?')} s)"}.get(r.status_code, "")
        raise CliError(f"HTTP {r.status_code}: {detail}{hint}")


def cmd_ticket(args) -> int:
    title, _, description = args.text.strip().partition("\n")
    if not title.strip():
        raise CliError("the ticket text is empty")
    params = {}
    if args.candidates:
        params["candidates"] = args.candidates
    if args.expert:
        params["expert"] = args.expert
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if getattr(args, "follow", False):
        params["mode"] = "async"
    r = _request("POST", f"{args.url}/v1/tickets", json={"title": title, "description": description},
                 params=params, headers=headers)
    if r.status_code == 202 and getattr(args, "follow", False):
        r = follow(args.url, r.json()["ticket_id"], headers)
    elif r.status_code == 202:  # accepted under load (or async): wait for the result
        r = _wait_for(args.url, r.json()["ticket_id"], headers)
    _raise_for(r)
    result = r.json()
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(render_result(result, mermaid=not args.no_mermaid, unicode=False if args.ascii else None))
    return 0


def _wait_for(url: str, ticket_id: str, headers: dict, timeout_s: float = 900) -> httpx.Response:
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        r = _request("GET", f"{url}/v1/tickets/{ticket_id}", headers=headers, timeout=30)
        _raise_for(r)
        body = r.json()
        if body["status"] == "done":
            return httpx.Response(200, json=body["result"])
        if body["status"] == "failed":
            raise CliError(f"ticket {ticket_id} failed: {body.get('error')}")
        time.sleep(1.0)
    raise CliError(f"ticket {ticket_id} did not finish within {timeout_s:.0f}s")


def follow(url: str, ticket_id: str, headers: dict, timeout_s: float = 900, interval_s: float = 0.5,
           out=None, clock=None, sleep=None) -> httpx.Response:
    """Poll a submitted ticket, printing each change of status (queued, running, a retry, done) with the
    seconds since submission, and the stage times of the result. The store records a ticket's status, not
    its stages, so the stages (classify, plan, score) are shown from the result's timings once it is done."""
    import time

    out = out or sys.stderr
    clock, sleep = clock or time.monotonic, sleep or time.sleep
    t0, last = clock(), None
    print(f"ticket {ticket_id} submitted", file=out, flush=True)
    while clock() - t0 < timeout_s:
        r = _request("GET", f"{url}/v1/tickets/{ticket_id}", headers=headers, timeout=30)
        _raise_for(r)
        body = r.json()
        status, attempts, error = body["status"], body.get("attempts") or 0, body.get("error")
        if (status, attempts) != last:
            line = f"{clock() - t0:7.1f}s  {status}"
            if status == "running" and attempts > 1:
                line += f" (attempt {attempts})"
            if status == "queued" and error:
                line += f" again: {error}"
            print(line, file=out, flush=True)
            last = (status, attempts)
        if status == "done":
            for stage in stage_lines(body["result"] or {}):
                print(f"          {stage}", file=out, flush=True)
            return httpx.Response(200, json=body["result"])
        if status in ("failed", "cancelled"):
            raise CliError(f"ticket {ticket_id} {status}: {error or 'no reason recorded'}")
        sleep(interval_s)
    raise CliError(f"ticket {ticket_id} did not finish within {timeout_s:.0f}s")


def stage_lines(result: dict) -> list[str]:
    """The stages of a finished ticket as its result reports them."""
    t = result.get("timings_ms") or {}
    if result.get("shared"):
        return [f"shared ({result['shared']}) from ticket {result.get('shared_from')}"]
    lines = []
    if "classify" in t:
        lines.append(f"classified {result.get('task')} ({result.get('decision_path')}) in {_secs(t['classify'])}")
    if "plan" in t:
        lines.append(f"planned by {result.get('expert')}: {len(result.get('candidates') or [])} candidates in "
                     f"{_secs(t['plan'])}")
    if "score" in t:
        lines.append(f"scored in {_secs(t['score'])}; best is candidate {result.get('best_index')}")
    return lines


def render_result(result: dict, mermaid: bool = True, unicode: bool | None = None) -> str:
    """The workflow as boxes, with what it was grounded in right under the knowledge line."""
    from cluster.render import render_result as render

    lines = render(result, mermaid=mermaid, unicode=unicode).split("\n")
    at = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("knowledge ")), len(lines))
    lines[at:at] = provenance_lines(result)
    return "\n".join(lines)


def provenance_lines(result: dict) -> list[str]:
    """The runbook nodes, chunks and past cases shown to the expert, the one whose workflow it followed, the
    similar past tickets (similarity, verdict) and the knowledge each step came from."""
    from cluster.render import clean

    k = result.get("knowledge") or {}
    items = [i for i in k.get("items") or [] if isinstance(i, dict) and i.get("id")]
    by_id = {i["id"]: i for i in items}
    reference = k.get("reference")
    lines = []
    if reference:
        ref = by_id.get(reference)
        what = f"{clean(ref.get('kind'))} {clean(ref.get('title', ''))} " if ref else ""
        lines.append(f"reference {what}({clean(reference)})")
    for i in items:
        score = f"{i['score']:.2f}" if isinstance(i.get("score"), (int, float)) else "-"
        source = f" [{clean(i['source'])}]" if i.get("source") else ""
        mark = "  <- reference" if i["id"] == reference else ""
        lines.append(f"  {clean(i.get('kind', '?')):<5} {score}  {clean(i.get('title', ''))} ({clean(i['id'])}){source}{mark}")
    versions = [f"knowledge base {clean(k['version'])}" if k.get("version") else "",
                f"case memory revision {clean(k['cases_version'])}" if k.get("cases_version") else ""]
    if any(versions):
        lines.append("  " + ", ".join(v for v in versions if v))
    cases = [c for c in result.get("similar_cases") or [] if isinstance(c, dict)]
    if cases:
        lines.append("similar cases")
        for c in cases:
            sim = f"{c['similarity']:.2f}" if isinstance(c.get("similarity"), (int, float)) else "-"
            verdict = {"edit": "edited", "accept": "accepted"}.get(c.get("verdict"), clean(c.get("verdict", "?")))
            role = "reference" if c.get("reference") else "shown" if c.get("shown") else "retrieved"
            lines.append(f"  {sim}  {verdict:<8} {role:<9} {clean(c.get('ticket_id', '?'))}  {clean(c.get('title', ''))}")
    steps = (result.get("workflow") or {}).get("steps") or []
    cited: dict[str, list[int]] = {}
    for n, step in enumerate(steps, 1):
        if isinstance(step, dict) and step.get("source"):
            cited.setdefault(step["source"], []).append(n)
    if cited:
        lines.append("steps from " + "; ".join(f"{_numbers(ns)} {clean(src)}" for src, ns in cited.items()))
    return lines


def _numbers(ns: list[int]) -> str:
    """1, 2, 3, 5 -> "1-3, 5"."""
    runs: list[list[int]] = []
    for n in ns:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def cmd_status(args) -> int:
    r = _request("GET", f"{args.url}/healthz", timeout=10)
    _raise_for(r)
    h = r.json()
    print(f"status: {h['status']} at {args.url}")
    print(f"map version: {h['map_version']}")
    print(f"experts: {', '.join(h['experts'])}")
    print(f"tasks: {', '.join(h['tasks'])}")
    api_key = getattr(args, "api_key", None)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    s = _request("GET", f"{args.url}/v1/stats", timeout=10, headers=headers)
    if s.status_code in (401, 403):
        print("queue: needs an API key with the ticket role (--api-key or $FLOWROUTER_API_KEY)")
        return 0
    _raise_for(s)
    for line in status_lines(s.json()):
        print(line)
    return 0


def _secs(ms) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f}s"


def status_lines(stats: dict) -> list[str]:
    """/v1/stats in a few lines: the queue, the recent window, webhook deliveries."""
    q = stats.get("queue") or {}
    lat = stats.get("latency_ms") or {}
    rejects = (stats.get("rejects") or {}).get("total", 0)
    lines = [f"queue: {q.get('inflight', 0)} computing, {q.get('waiting', 0)} waiting (limits "
             f"{q.get('max_inflight', '?')}/{q.get('max_waiting', '?')}); async {q.get('async_queued', 0)} queued, "
             f"{q.get('async_running', 0)} running",
             f"last {stats.get('window_s', 60):.0f}s: {stats.get('tickets_per_s') or 0:.2f} tickets/s, "
             f"p50 {_secs(lat.get('p50'))}, p95 {_secs(lat.get('p95'))}, {stats.get('errors', 0)} errors, "
             f"{rejects} rejected"]
    wh = stats.get("webhooks")
    if wh and wh.get("enabled", True) and "delivered" in wh:
        line = (f"webhooks: {wh['delivered']} delivered, {wh.get('retrying', 0)} retrying, {wh.get('pending', 0)} "
                f"pending, {wh.get('failed', 0)} failed ({wh.get('retries', 0)} retries)")
        last = wh.get("last_error")
        if last:
            line += f"; last error: {last.get('error')} (ticket {last.get('ticket_id')})"
        lines.append(line)
    return lines


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
    for line in _scope_report(cfg):
        print(line)
    return 0


def _scope_report(cfg) -> list[str]:
    """One line per expert: how many knowledge documents its scope covers, warning where none."""
    if not cfg.knowledge.docs or not any(e.knowledge_scope for e in cfg.experts):
        return []
    from experts.knowledge.documents import KnowledgeError, load_documents
    from router.doc_tasks import assigner_for, scope_coverage

    try:
        docs = load_documents(cfg.knowledge.docs).documents
    except KnowledgeError as exc:
        return [f"WARNING knowledge: {exc}"]
    filed = assigner_for(cfg)(docs)
    manifest = {"docs": {d.source: {"tags": d.tags, **filed.get(d.source, {})} for d in docs}}
    lines = []
    for name, n in scope_coverage(manifest, cfg.experts).items():
        if n == 0:
            lines.append(f"WARNING expert {name}: its knowledge_scope covers none of the {len(docs)} documents; "
                         "its retrieval will fall back to the whole base")
        else:
            lines.append(f"expert {name}: knowledge scope covers {n} of {len(docs)} documents")
    return lines
