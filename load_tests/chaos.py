"""Chaos under load: an async ticket flood while Planner and Scorer replicas are SIGKILLed and a map is published.

    python -m load_tests.chaos                                   # make chaos
    python -m load_tests.chaos --duration 180 --kill-interval 60 --url http://127.0.0.1:8000 --state-dir DIR

For --duration seconds a client submits distinct real tickets with `POST /v1/tickets?mode=async` (one every
--submit-every seconds, at most --max-tickets); every --kill-interval seconds one Planner and one Scorer replica
process of this service are SIGKILLed (Serve restarts them); halfway through, a copy of the live map with a new
version and one task moved to another expert is published with `flowrouter map publish`. Afterwards every
accepted ticket (200/202) is polled until it is terminal (--drain-timeout); one that never gets there, or whose
record is gone, is lost. The published map is rolled back at the end (--keep-map leaves it live), and the run
waits until the killed deployments have their replicas back.

Replica processes are found under the service's own server process (`server-<port>.json` in --state-dir, by
default the config's serve.state_dir, else $FLOWROUTER_HOME/state), never by name across the machine. Without
--url the service on :8000 is used when one answers, else one is started for the run (load_tests/run.py).
FLOWROUTER_API_KEY / FLOWROUTER_ADMIN_KEY are sent to a service in `auth.mode: keys`. Prints the verdict and
`lost: N`; the exit status is 1 when an objective is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from core.config import load_config
from core.paths import cache_dir
from load_tests.bench_flood import pct
from load_tests.data import REPO, DataUnavailable, diverse, load_rows, run_nonce, to_ticket

TERMINAL = ("done", "failed")
KILL_TARGETS = ("planner-", "scorer")  # deployment name prefixes, as deployments/app.py names them


def default_state_dir(config: str | None = None) -> Path:
    """Where the service's server-<port>.json lives: `serve.state_dir` of the config, else <cache>/state."""
    return Path(load_config(config).serve.state_dir or cache_dir() / "state")


def server_pid(state_dir: Path, url: str) -> int:
    """The pid of the service's own server process, from the `server-<port>.json` it wrote at start."""
    port = url.rstrip("/").rsplit(":", 1)[-1].split("/")[0]
    path = Path(state_dir) / f"server-{port}.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: is the service at {url} started from this machine? "
                         "pass the state dir it uses with --state-dir")
    return int(json.loads(path.read_text())["pid"])


def serve_replicas(root_pid: int, prefix: str) -> list:
    """psutil processes of this server's Serve replicas whose deployment name starts with `prefix`."""
    import psutil

    tag = f"ServeReplica:flowrouter:{prefix}"
    out = []
    for p in psutil.Process(root_pid).children(recursive=True):
        try:
            if any(tag in part for part in p.cmdline()[:1]) or tag in p.name():
                out.append(p)
        except psutil.Error:
            continue
    return out


def chaos_map(live: dict, version: str) -> dict:
    """The live map under a new version, with one task routed to another deployed expert when there is one."""
    cur = live["current"]
    routes = dict(cur["routes"])
    experts = sorted(live.get("experts") or {cur["fallback"], *routes.values()})
    for task in sorted(routes):
        others = [e for e in experts if e != routes[task]]
        if others:
            routes[task] = others[0]
            break
    return {"version": version, "routes": routes, "fallback": cur["fallback"], "source": "chaos"}


def lost_tickets(accepted: list[str], final: dict[str, str | None]) -> list[str]:
    """Accepted tickets whose last seen status is not terminal (None: never found again)."""
    return [t for t in accepted if final.get(t) not in TERMINAL]


def kill_rounds_expected(duration_s: float, interval_s: float) -> int:
    """Kill rounds at interval, 2*interval, ... strictly inside the run."""
    return max(0, int((duration_s - 1e-9) // interval_s)) if interval_s > 0 else 0


def judge(summary: dict, max_submit_p95_ms: float = 3000) -> list[tuple[bool, str]]:
    """[(passed, line)]: nothing lost or failed, the chaos really happened, submitting stayed clean and quick."""
    s = summary
    p95 = s["submit_p95_ms"]
    return [
        (s["accepted"] >= 1, f"accepted tickets {s['accepted']} >= 1"),
        (s["lost"] == 0, f"lost (accepted, never terminal) {s['lost']} == 0"),
        (s["failed"] == 0, f"failed (terminal, status failed) {s['failed']} == 0"),
        (s["errors"] == 0, f"submit errors (no HTTP answer, 5xx, refusal without Retry-After) {s['errors']} == 0"),
        (p95 is not None and p95 <= max_submit_p95_ms,
         f"submit p95 {'-' if p95 is None else f'{p95:.0f}'} ms <= {max_submit_p95_ms:.0f} ms"),
        (s["kill_rounds"] >= s["kill_rounds_expected"] and all(s["kills"].get(k, 0) >= s["kill_rounds_expected"]
                                                            for k in KILL_TARGETS),
         f"kill rounds {s['kill_rounds']} >= {s['kill_rounds_expected']} (SIGKILLed: {s['kills']})"),
        (bool(s["published"]), f"map published mid-run: {s['published'] or 'no'}"),
    ]


class Chaos:
    def __init__(self, url: str, state_dir: Path, duration_s: float, kill_interval_s: float, submit_every_s: float,
                 max_tickets: int, candidates: int, seed: int | None = None):
        self.url, self.state_dir = url.rstrip("/"), Path(state_dir)
        self.duration_s, self.kill_interval_s, self.submit_every_s = duration_s, kill_interval_s, submit_every_s
        self.max_tickets, self.candidates = max_tickets, candidates
        self.rng = random.Random(seed)
        self.nonce = run_nonce(self.rng)
        key = os.environ.get("FLOWROUTER_API_KEY")
        admin = os.environ.get("FLOWROUTER_ADMIN_KEY") or key
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.admin_headers = {"Authorization": f"Bearer {admin}"} if admin else {}
        self.accepted: list[str] = []
        self.refused = self.errors = 0
        self.submit_ms: list[float] = []
        self.kills: dict[str, int] = {k: 0 for k in KILL_TARGETS}
        self.kill_log: list[dict] = []
        self.kill_rounds = 0
        self.published: str | None = None
        self.publish_error: str | None = None
        self.stop = threading.Event()

    # ---- the service's own replica processes -------------------------------------------------------
    def replicas(self) -> dict[str, list]:
        """{target prefix: [psutil.Process]} of this service's planner and scorer replicas."""
        root = server_pid(self.state_dir, self.url)
        return {k: serve_replicas(root, k) for k in KILL_TARGETS}

    def kill_round(self) -> None:
        found = self.replicas()
        for k, procs in found.items():
            if not procs:
                continue
            p = self.rng.choice(procs)
            try:
                p.send_signal(signal.SIGKILL)
            except Exception as exc:  # already gone: Serve restarted it meanwhile
                self.kill_log.append({"target": k, "pid": p.pid, "error": str(exc)})
                continue
            self.kills[k] += 1
            self.kill_log.append({"target": k, "pid": p.pid, "t": round(time.time() - self.t0, 1)})
        self.kill_rounds += 1
        print(f"[{time.time() - self.t0:5.0f}s] SIGKILL round {self.kill_rounds}: {self.kill_log[-len(KILL_TARGETS):]}",
              flush=True)

    # ---- the three actors --------------------------------------------------------------------------
    def submitter(self, texts: list[str]) -> None:
        i = 0
        while not self.stop.is_set() and i < min(self.max_tickets, len(texts)):
            tid = f"chaos-{self.nonce}-{i}"
            t0 = time.time()
            try:
                r = httpx.post(f"{self.url}/v1/tickets", params={"mode": "async", "candidates": self.candidates},
                               json=to_ticket(texts[i]) | {"id": tid}, headers=self.headers, timeout=60)
                self.submit_ms.append((time.time() - t0) * 1000)
                if r.status_code in (200, 202):
                    self.accepted.append(tid)
                elif r.status_code in (429, 503) and r.headers.get("Retry-After"):
                    self.refused += 1
                else:
                    self.errors += 1
            except httpx.HTTPError:
                self.errors += 1
            i += 1
            self.stop.wait(self.submit_every_s)

    def killer(self) -> None:
        rounds = kill_rounds_expected(self.duration_s, self.kill_interval_s)
        for n in range(1, rounds + 1):
            if self.stop.wait(max(0.0, self.t0 + n * self.kill_interval_s - time.time())):
                return
            self.kill_round()

    def publisher(self) -> None:
        if self.stop.wait(self.duration_s / 2):
            return
        try:
            live = httpx.get(f"{self.url}/v1/map", headers=self.admin_headers, timeout=30).json()
            new = chaos_map(live, f"chaos-{self.nonce}")
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
                json.dump(new, fh)  # JSON is YAML
            env = dict(os.environ, **({"FLOWROUTER_ADMIN_KEY": self.admin_headers["Authorization"][7:]}
                                      if self.admin_headers else {}))
            out = subprocess.run([sys.executable, "-m", "cluster.cli", "map", "publish", fh.name, "--url", self.url],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            os.unlink(fh.name)
            if out.returncode == 0:
                self.published = new["version"]
                print(f"[{time.time() - self.t0:5.0f}s] published map {new['version']}", flush=True)
            else:
                self.publish_error = (out.stderr or out.stdout).strip()[-500:]
                print(f"map publish failed: {self.publish_error}", flush=True)
        except Exception as exc:
            self.publish_error = f"{type(exc).__name__}: {exc}"
            print(f"map publish failed: {self.publish_error}", flush=True)

    # ---- afterwards ---------------------------------------------------------------------------------
    def drain(self, timeout_s: float) -> dict[str, str | None]:
        final: dict[str, str | None] = {t: None for t in self.accepted}
        deadline = time.time() + timeout_s
        shown, last_print = -1, 0.0
        while time.time() < deadline and (open_ := lost_tickets(self.accepted, final)):
            for tid in open_:
                try:
                    r = httpx.get(f"{self.url}/v1/tickets/{tid}", headers=self.headers, timeout=10)
                except httpx.HTTPError:
                    continue
                final[tid] = r.json()["status"] if r.status_code == 200 else None
            finished = len(self.accepted) - len(lost_tickets(self.accepted, final))
            if finished != shown and time.time() - last_print >= 30:  # a drain takes minutes: show it moving
                print(f"[{time.time() - self.t0:5.0f}s] drained {finished}/{len(self.accepted)}", flush=True)
                shown, last_print = finished, time.time()
            time.sleep(2)
        return final

    def recover(self, before: dict[str, int], timeout_s: float) -> bool:
        """healthz answers and every killed deployment has as many replica processes as before the run."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                ok = httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok and all(len(v) >= before[k] for k, v in self.replicas().items()):
                return True
            time.sleep(2)
        return False

    def rollback(self) -> None:
        if self.published:
            r = httpx.post(f"{self.url}/v1/map/rollback", headers=self.admin_headers, timeout=30)
            print(f"rolled back {self.published}: HTTP {r.status_code}", flush=True)

    def run(self, texts: list[str], drain_timeout_s: float, keep_map: bool = False,
            recover_timeout_s: float = 300) -> dict:
        before = {k: len(v) for k, v in self.replicas().items()}
        self.t0 = time.time()
        threads = [threading.Thread(target=self.submitter, args=(texts,), daemon=True),
                   threading.Thread(target=self.killer, daemon=True), threading.Thread(target=self.publisher, daemon=True)]
        for t in threads:
            t.start()
        self.stop.wait(self.duration_s)
        self.stop.set()
        for t in threads:
            t.join(timeout=180)
        print(f"[{time.time() - self.t0:5.0f}s] load over: {len(self.accepted)} accepted, {self.refused} refused; "
              f"draining ...", flush=True)
        final = self.drain(drain_timeout_s)
        lost = lost_tickets(self.accepted, final)
        recovered = self.recover(before, recover_timeout_s)
        if not keep_map:
            self.rollback()
        return {"accepted": len(self.accepted), "refused": self.refused, "errors": self.errors,
                "done": sum(1 for s in final.values() if s == "done"),
                "failed": sum(1 for s in final.values() if s == "failed"), "lost": len(lost), "lost_ids": lost,
                "submit_p50_ms": pct(self.submit_ms, 50), "submit_p95_ms": pct(self.submit_ms, 95),
                "kills": dict(self.kills), "kill_rounds": self.kill_rounds,
                "kill_rounds_expected": kill_rounds_expected(self.duration_s, self.kill_interval_s),
                "kill_log": self.kill_log, "replicas_before": before, "recovered": recovered,
                "published": self.published, "publish_error": self.publish_error,
                "wall_s": round(time.time() - self.t0, 1)}


def report(summary: dict, max_submit_p95_ms: float = 3000) -> int:
    lines = judge(summary, max_submit_p95_ms)
    print("SLO chaos-under-load:")
    for ok, line in lines:
        print(f"  {'PASS' if ok else 'FAIL'}  {line}")
    missed = sum(1 for ok, _ in lines if not ok)
    print(f"verdict: {'PASS' if not missed else f'FAIL ({missed} objective(s) missed)'}")
    print(f"lost: {summary['lost']}")
    return 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    from load_tests.run import Service

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="FlowRouter base URL on 127.0.0.1 (default: :8000 or start one)")
    ap.add_argument("--config", help="config for a service this run starts")
    ap.add_argument("--state-dir",
                    help="the service's state dir (default: serve.state_dir of --config, else $FLOWROUTER_HOME/state)")
    ap.add_argument("--duration", type=float, default=180, help="seconds of load and chaos (default 180)")
    ap.add_argument("--kill-interval", type=float, default=60, help="seconds between kill rounds (default 60)")
    ap.add_argument("--submit-every", type=float, default=3, help="seconds between async submissions (default 3)")
    ap.add_argument("--max-tickets", type=int, default=40, help="stop submitting after this many (default 40)")
    ap.add_argument("--candidates", type=int, default=1)
    ap.add_argument("--drain-timeout", type=float, default=1800, help="seconds to wait for accepted tickets")
    ap.add_argument("--max-submit-p95-ms", type=float, default=3000)
    ap.add_argument("--keep-map", action="store_true", help="leave the published map live")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    try:
        texts = diverse(load_rows(), k=args.max_tickets, seed=int(time.time()))
    except DataUnavailable as exc:
        print(f"SKIPPED: {exc}")
        return 0
    service = Service(args.url, args.config)
    try:
        chaos = Chaos(service.url, Path(args.state_dir) if args.state_dir else default_state_dir(args.config), args.duration,
                      args.kill_interval, args.submit_every, args.max_tickets, args.candidates)
        texts = [f"{t} ref {chaos.nonce}" for t in texts]
        summary = chaos.run(texts, args.drain_timeout, keep_map=args.keep_map)
    finally:
        service.close()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return report(summary, args.max_submit_p95_ms)


if __name__ == "__main__":
    sys.exit(main())
