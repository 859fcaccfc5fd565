"""`flowrouter map`: the live task->expert map of a running service.

    flowrouter map show     [--url URL] [--json]
    flowrouter map history  [--url URL] [--json]
    flowrouter map publish  FILE [--url URL] [--admin-key KEY]
    flowrouter map rollback [--url URL] [--admin-key KEY]

Publishing is validated twice: the file locally (a readable map) and by the service against what
it deploys (every task routed, no unknown task, every expert deployed). A refused map leaves the
live one untouched; the reason is printed and the exit status is 2. Requests in flight finish on
the map they started with; new ones use the new map within a second. Publish and rollback need an
admin key (`--admin-key` or FLOWROUTER_ADMIN_KEY), sent as `Authorization: Bearer <key>`; reads
send it too when given (or FLOWROUTER_API_KEY).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cluster.cli import CliError

ADMIN_KEY_ENV = "FLOWROUTER_ADMIN_KEY"
API_KEY_ENV = "FLOWROUTER_API_KEY"


def register(subparsers) -> None:
    p = subparsers.add_parser("map", help="show, publish or roll back the live task->expert map",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="map_command", metavar="ACTION")
    sub.required = True
    for name, helptext, func in (("show", "the live map", cmd_show), ("history", "every published map", cmd_history)):
        s = sub.add_parser(name, help=helptext)
        add_service_args(s, admin=False)
        s.add_argument("--json", action="store_true", help="machine-readable output")
        s.set_defaults(func=func)
    s = sub.add_parser("publish", help="make a map file live (validated by the service first)")
    s.add_argument("file", metavar="FILE", help="map YAML (e.g. a leaderboard's maps/<version>.yaml)")
    add_service_args(s)
    s.set_defaults(func=cmd_publish)
    s = sub.add_parser("rollback", help="return to the previously published map")
    add_service_args(s)
    s.set_defaults(func=cmd_rollback)


def add_service_args(p, admin: bool = True) -> None:
    p.add_argument("--url", help="service URL (default: the one `flowrouter serve` would use for --config)")
    p.add_argument("--config", help="config the service was started with (locates its URL and state)")
    p.add_argument("--admin-key" if admin else "--key", dest="key", metavar="KEY",
                   help=f"API key sent as Authorization: Bearer (default ${ADMIN_KEY_ENV}"
                        + ("" if admin else f" or ${API_KEY_ENV}") + ")")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP call (default 60)")


class MapClient:
    """The map endpoints of a running service, with errors turned into one-line CLI messages."""

    def __init__(self, url: str, key: str | None = None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    @classmethod
    def from_args(cls, args) -> MapClient:
        key = getattr(args, "key", None) or os.environ.get(ADMIN_KEY_ENV) or os.environ.get(API_KEY_ENV)
        return cls(service_url(args), key, getattr(args, "timeout", 60.0))

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        import httpx

        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            r = httpx.request(method, self.url + path, json=body, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise CliError(f"no answer from {self.url} ({exc.__class__.__name__}: {exc}); is the service "
                           "running (`flowrouter status`)?") from exc
        if r.status_code < 300:
            return r.json()
        detail = _detail(r)
        if r.status_code == 401:
            raise CliError(f"{self.url} wants an API key ({detail}): pass --admin-key or set ${ADMIN_KEY_ENV}")
        if r.status_code == 403:
            raise CliError(f"the key was refused for {method} {path} ({detail}): map changes need an admin key")
        if r.status_code == 409:
            raise CliError(detail)
        raise CliError(f"{method} {path} failed with HTTP {r.status_code}: {detail}")

    def get(self) -> dict:
        """{current, history, tasks, experts}."""
        return self._call("GET", "/v1/map")

    def publish(self, task_map: dict) -> dict:
        return self._call("POST", "/v1/map", task_map)

    def rollback(self) -> dict:
        return self._call("POST", "/v1/map/rollback")


def _detail(r) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:500] or r.reason_phrase
    d = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(body, dict) and body.get("errors"):
        d = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', [])[1:]) or 'body'}: {e.get('msg')}"
                      for e in body["errors"])
        return f"invalid map: {d}"
    return d if isinstance(d, str) else json.dumps(d)


def service_config(args):
    """The config named by --config (default configs/default.yaml), with --url's port applied."""
    from core.config import ConfigError, load_config

    try:
        cfg = load_config(getattr(args, "config", None))
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    url = getattr(args, "url", None)
    if url:
        from urllib.parse import urlparse

        port = urlparse(url).port
        if port:
            cfg.serve.port = port
    from cluster.local import resolve_state_dir

    return resolve_state_dir(cfg)


def service_url(args) -> str:
    if getattr(args, "url", None):
        return args.url
    from cluster.local import url_of

    return url_of(service_config(args))


def load_map_file(path: str):
    from core.task_map import MapError, TaskMap

    if not Path(path).exists():
        raise CliError(f"map file not found: {path}")
    try:
        return TaskMap.load(path)
    except MapError as exc:
        raise CliError(str(exc)) from exc


def describe(m: dict, tasks: list[str] | None = None) -> list[str]:
    lines = [f"map {m['version']} (created {m.get('created', '?')}, source: {m.get('source', '?')})"]
    width = max([len(t) for t in m["routes"]] + [8])
    for t in tasks or sorted(m["routes"]):
        lines.append(f"  {t:<{width}} -> {m['routes'].get(t, '(fallback) ' + m['fallback'])}")
    lines.append(f"  {'unknown':<{width}} -> {m['fallback']} (fallback)")
    return lines


def cmd_show(args) -> int:
    live = MapClient.from_args(args).get()
    if args.json:
        print(json.dumps(live, indent=2, ensure_ascii=False))
        return 0
    print("\n".join(describe(live["current"], live.get("tasks"))))
    print(f"deployed experts: {', '.join(live.get('experts', []))}")
    return 0


def cmd_history(args) -> int:
    live = MapClient.from_args(args).get()
    if args.json:
        print(json.dumps(live["history"], indent=2, ensure_ascii=False))
        return 0
    current = live["current"]["version"]
    for h in live["history"]:
        mark = "*" if h["version"] == current else " "
        print(f"{mark} {h['file']}  {h['version']:<36} {h['created']}  {h['source']}")
    return 0


def publish_map(client: MapClient, task_map, live: dict | None = None) -> dict:
    """Publish a TaskMap; prints the route diff against the live map. CliError on refusal."""
    from core.task_map import TaskMap
    from leaderboard.derive import diff_maps

    live = live or client.get()
    old = TaskMap.model_validate(live["current"])
    tasks, experts = live.get("tasks") or [], live.get("experts") or []
    try:
        task_map.check(tasks, experts)  # the service checks the same; this names every problem up front
    except ValueError as exc:
        raise CliError(f"{exc} (nothing published; the live map is still {old.version})") from exc
    try:
        res = client.publish(task_map.model_dump(mode="json"))
    except CliError as exc:
        raise CliError(f"{exc} (nothing published; the live map is still {old.version})") from exc
    print("\n".join(diff_maps(old, task_map).lines()))
    print(f"published {res['published']}: new requests use it; requests in flight finish on {old.version}")
    return res


def cmd_publish(args) -> int:
    task_map = load_map_file(args.file)
    publish_map(MapClient.from_args(args), task_map)
    return 0


def cmd_rollback(args) -> int:
    from core.task_map import TaskMap
    from leaderboard.derive import diff_maps

    client = MapClient.from_args(args)
    before = TaskMap.model_validate(client.get()["current"])
    res = client.rollback()
    restored = TaskMap.model_validate(res["map"])
    print("\n".join(diff_maps(before, restored).lines()))
    print(f"rolled back: {before.version} -> {restored.version}")
    return 0
