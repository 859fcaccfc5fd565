"""Run one Locust pattern against a FlowRouter on 127.0.0.1, time-bounded, then judge it against its SLO.

    python -m load_tests.run storm            # make load-storm
    python -m load_tests.run flood            # make load-flood
    python -m load_tests.run mixed            # make load-mixed: idle tickets, then the mixed-severity flood
    python -m load_tests.run storm --url http://127.0.0.1:8000 --duration 60s --users 10

Without --url it uses the service at http://127.0.0.1:8000 when one answers, else starts one with
`flowrouter serve` on a free port (default config, or --config) and stops it afterwards. Locust's
CSVs go to --out (default runs/load/<pattern>-<time>/); the exit status is the SLO verdict's.
The ticket data set is read in place; without it the run is skipped (exit 0, with the reason).
A service in `auth.mode: keys` needs FLOWROUTER_API_KEY (a `ticket` key) in the environment.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from load_tests import verdict
from load_tests.data import REPO, DataUnavailable, load_rows, require_loopback

PATTERNS = {
    # Users stay under the default per-address limit of open mode (auth.public_rate_per_minute: 1200).
    "storm": {"file": "locustfile_storm.py", "users": 12, "spawn_rate": 5, "duration": "180s"},
    "flood": {"file": "locustfile_flood.py", "users": 4, "spawn_rate": 4, "duration": "240s"},
    # The mixed run times itself: an idle phase of unknown length, --duration of flood, then the critical tickets
    # in flight; Locust's -t adds `idle_budget_s` (idle phase + that drain) so it only caps a run that hangs.
    "mixed": {"file": "locustfile_mixed.py", "users": 30, "spawn_rate": 10, "duration": "180s",
              "duration_env": "FLOWROUTER_MIXED_FLOOD_S", "idle_budget_s": 1200},
}


def locust_run_time(pattern: str, duration: str) -> tuple[str, dict]:
    """Locust's -t and the environment for a pattern: self-timed patterns get the flood length as env."""
    spec = PATTERNS[pattern]
    if "duration_env" not in spec:
        return duration, {}
    return f"{_seconds(duration) + spec['idle_budget_s']}s", {spec["duration_env"]: str(_seconds(duration))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(float(duration[:-1]) * units[duration[-1]]) if duration[-1] in units else int(duration)


class Service:
    """A service this run started (and will stop), or one that was already there."""

    def __init__(self, url: str | None, config: str | None, reuse: bool = True):
        """`reuse`: take the service on :8000 when one answers; False always starts one from `config`."""
        self.started: list[str] | None = None
        if url:
            require_loopback(url)
            if not healthy(url):
                raise SystemExit(f"no FlowRouter answers at {url}")
            self.url = url
            return
        if reuse and healthy("http://127.0.0.1:8000"):
            self.url = "http://127.0.0.1:8000"
            return
        port = _free_port()
        cli = [sys.executable, "-m", "cluster.cli"]
        args = ([config] if config else []) + ["--port", str(port)]
        print(f"starting FlowRouter on 127.0.0.1:{port} (about a minute) ...", flush=True)
        out = subprocess.run([*cli, "serve", *args], cwd=REPO, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise SystemExit(f"flowrouter serve failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        self.started = [*cli, "shutdown", *args]
        self.url = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        if self.started:
            subprocess.run(self.started, cwd=REPO, capture_output=True, text=True, timeout=300)


def run_locust(pattern: str, url: str, users: int, spawn_rate: float, duration: str, prefix: Path,
               env: dict | None = None) -> int:
    require_loopback(url)
    spec = PATTERNS[pattern]
    prefix.parent.mkdir(parents=True, exist_ok=True)
    run_time, timing_env = locust_run_time(pattern, duration)
    cmd = [sys.executable, "-m", "locust", "-f", str(Path(__file__).parent / spec["file"]), "--headless",
           "-u", str(users), "-r", str(spawn_rate), "-t", run_time, "--host", url, "--csv", str(prefix),
           "--only-summary", "--stop-timeout", "30", "--exit-code-on-error", "0"]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, **timing_env, **(env or {})),
                          timeout=_seconds(run_time) + 180)
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pattern", choices=sorted(PATTERNS))
    ap.add_argument("--url", help="FlowRouter base URL on 127.0.0.1 (default: :8000 or start one)")
    ap.add_argument("--config", help="config for a service this run starts")
    ap.add_argument("--users", type=int)
    ap.add_argument("--spawn-rate", type=float)
    ap.add_argument("--duration", help="Locust -t, e.g. 90s or 3m (mixed: the flood after the idle phase)")
    ap.add_argument("--slo", help="SLO YAML (default load_tests/slo/<pattern>.yaml)")
    ap.add_argument("--out", help="CSV folder (default runs/load/<pattern>-<time>)")
    args = ap.parse_args(argv)
    spec = PATTERNS[args.pattern]
    try:
        load_rows(limit=10)
    except DataUnavailable as exc:
        print(f"SKIPPED: {exc}")
        return 0
    out = Path(args.out or REPO / "runs" / "load" / f"{args.pattern}-{time.strftime('%Y%m%d-%H%M%S')}")
    prefix = out / args.pattern
    slo = args.slo or str(Path(__file__).parent / "slo" / f"{args.pattern}.yaml")
    service = Service(args.url, args.config)
    try:
        rc = run_locust(args.pattern, service.url, args.users or spec["users"], args.spawn_rate or spec["spawn_rate"],
                        args.duration or spec["duration"], prefix)
        if rc not in (0, 1):
            print(f"locust exited with status {rc}")
    finally:
        service.close()
    return verdict.main([f"{prefix}_stats.csv", slo])


if __name__ == "__main__":
    sys.exit(main())
