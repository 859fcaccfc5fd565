"""Replay benchmark of case memory: a correction must carry over to a paraphrase of its ticket.

    python -m load_tests.bench_cases                 # starts a service on a held-out base, runs, shuts it down
    python -m load_tests.bench_cases --url URL       # a running service whose base lacks the held-out runbooks
    python -m load_tests.bench_cases --consolidate   # + kb consolidate, approve, restart before the paraphrases
    python -m load_tests.bench_cases --calibrate     # offline: case similarity thresholds (no service)

Cases: the first 30 Prometheus-operator runbook cases of the test split (`leaderboard.workflow_cases`),
each with a team-written paraphrase in `load_tests/case_paraphrases.jsonl` (alert name removed, other
words). Their own runbooks are hidden: the service this script starts builds its knowledge base from
the starter documents plus every other runbook. For each case the script sends the ticket (alert name and
meaning, as `flowrouter eval workflows` does), answers it with an `edit` whose steps are the runbook's
reference steps, and, once all 30 corrections are in, sends each paraphrase. It reports STEPScore F1 of
the paraphrase's workflow against the correction (and of the first answer, before any correction), the
share of paraphrases whose `similar_cases` cites the corrected ticket, and the case-retrieval time the
Planner reports (`timings_ms.cases`, p50). With `--consolidate`, between the corrections and the paraphrases
the case memory is consolidated over the admin API, the proposal approved, and the whole service restarted
(`flowrouter shutdown` + `flowrouter serve`): the paraphrases then meet the approved version after a restart.

`--calibrate` measures, with MiniLM and the same hybrid similarity the Planner uses, how similar each
team ticket of `leaderboard/data/runbook_tickets.jsonl` (not the paraphrases measured here) is to its
own case and to the most similar other case, and prints thresholds between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

from core.config import load_config
from core.embeddings import shared_embedder
from core.paths import shared_data_dir
from core.stepscore import step_scores
from core.workflow import linear_workflow
from experts.knowledge.cases import Case, CaseIndex, CaseStore
from leaderboard.workflow_cases import TICKETS_FILE, WorkflowCase, load_runbook_cases, split_cases

REPO = Path(__file__).resolve().parents[1]
RUNBOOKS = shared_data_dir() / "prometheus-operator-runbooks"
PARAPHRASES = Path(__file__).resolve().parent / "case_paraphrases.jsonl"
N_CASES = 30
MAX_STEPS = 30  # the feedback API's bound on a correction


def load_paraphrases(path: Path = PARAPHRASES) -> dict[str, dict]:
    return {r["id"]: r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip())}


def bench_cases(runbooks: Path = RUNBOOKS, n: int = N_CASES) -> list[WorkflowCase]:
    """The benchmark's cases: the test split's first `n` by id that have a committed paraphrase."""
    para = load_paraphrases()
    cases = sorted(split_cases(load_runbook_cases(runbooks), "test"), key=lambda c: c.id)
    chosen = [c for c in cases if c.id in para][:n]
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} cases have a paraphrase in {PARAPHRASES}")
    return chosen


def ticket_of(case: WorkflowCase) -> dict:
    title, _, rest = case.query.partition(": ")
    return {"title": title[:500], "description": rest[:8000]}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else 0.0


# ---- calibration (offline) ---------------------------------------------------------------------
def calibrate(runbooks: Path) -> dict:
    cases = load_runbook_cases(runbooks)
    team = {}
    for line in TICKETS_FILE.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            team[row["id"]] = f"{row['title']}\n{row['description']}"
    bench = {c.id for c in bench_cases(runbooks)}
    calib = [c for c in cases if c.id in team and c.id not in bench]  # tune on tickets the benchmark never sends
    embedder = shared_embedder()
    cfg = load_config().cases
    with tempfile.TemporaryDirectory() as tmp:
        store = CaseStore(tmp)
        for c in calib:
            store.put(Case(ticket_id=c.id, text=f"{ticket_of(c)['title']}\n{ticket_of(c)['description']}",
                           verdict="edit", workflow=linear_workflow(c.reference_steps[:MAX_STEPS])))
        index = CaseIndex(store, lambda t: embedder.encode(t, role="passage"), cfg.lexical_weight, cfg.edit_bonus)
        index.refresh()
        own, other, top1 = [], [], 0
        for c in calib:
            q = team[c.id]
            hits = index.search(q, embedder.encode([q])[0], k=len(calib))
            sims = {h.case.ticket_id: h.similarity for h in hits}
            own.append(sims[c.id])
            other.append(max(v for k, v in sims.items() if k != c.id))
            top1 += hits[0].case.ticket_id == c.id
    return {"cases": len(calib), "top1_share": round(100 * top1 / len(calib), 1),
            "own": {"p10": _pct(own, 0.1), "p25": _pct(own, 0.25), "p50": _pct(own, 0.5)},
            "best_other": {"p50": _pct(other, 0.5), "p75": _pct(other, 0.75), "p90": _pct(other, 0.9)}}


# ---- the replay ----------------------------------------------------------------------------------
class Service:
    """A service on a held-out knowledge base (the benchmark's runbooks removed), started and stopped here."""

    def __init__(self, cases: list[WorkflowCase], runbooks: Path, candidates: int):
        self.work = Path(tempfile.mkdtemp(prefix="bench-cases-"))
        docs = self.work / "runbooks"
        hidden = {c.source for c in cases}
        for f in runbooks.rglob("*.md"):
            rel = f.relative_to(runbooks)
            if str(rel) not in hidden:
                (docs / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, docs / rel)
        cfg = load_config()
        cfg.knowledge.docs = [*cfg.knowledge.docs, str(docs)]
        cfg.knowledge.directory = str(self.work / "kb")
        cfg.serve.state_dir = str(self.work / "state")
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            cfg.serve.port = s.getsockname()[1]
        cfg.planner.candidates = candidates
        raw = cfg.model_dump(mode="json", exclude={"source"})
        raw["auth"] = {"mode": "open", "public_rate_per_minute": 0}
        self.config = self.work / "config.yaml"
        self.config.write_text(yaml.safe_dump(raw))
        self.url = f"http://127.0.0.1:{cfg.serve.port}"
        self.cli = [sys.executable, "-m", "cluster.cli"]

    def serve(self) -> None:
        out = subprocess.run([*self.cli, "serve", str(self.config)], cwd=REPO, capture_output=True, text=True,
                             timeout=1800)
        if out.returncode != 0:
            raise SystemExit(f"flowrouter serve failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")

    def shutdown(self) -> None:
        subprocess.run([*self.cli, "shutdown", str(self.config)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)

    def restart(self) -> float:
        t0 = time.perf_counter()
        self.shutdown()
        self.serve()
        return time.perf_counter() - t0

    def __enter__(self):
        self.serve()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        shutil.rmtree(self.work, ignore_errors=True)


def consolidate_and_restart(http: httpx.Client, url: str, restart) -> dict:
    """kb consolidate over the admin API, approve what it proposes, restart the service; what happened."""
    r = http.post(f"{url}/v1/admin/kb/consolidate")
    if r.status_code != 200:
        raise SystemExit(f"kb consolidate refused: HTTP {r.status_code} {r.text[:300]}")
    p = r.json()
    if not p["filed"]:
        raise SystemExit("kb consolidate proposed nothing from the 30 corrections: nothing to replay against")
    print(f"consolidation proposal {p['id']}: {p['added']} new node(s), {p['revised']} revised", flush=True)
    done = http.post(f"{url}/v1/admin/kb/proposals/{p['id']}/approve")
    if done.status_code != 200:
        raise SystemExit(f"approving {p['id']} refused: HTTP {done.status_code} {done.text[:300]}")
    version = done.json()["version"]
    print(f"approved as {version}; restarting the service ...", flush=True)
    restart_s = restart()
    current = http.get(f"{url}/v1/admin/kb").json()["current"]
    if current != version:
        raise SystemExit(f"after the restart the knowledge base is {current}, not the approved {version}")
    return {"proposal": p["id"], "added": p["added"], "revised": p["revised"], "version": version,
            "restart_s": round(restart_s, 1)}


def replay(url: str, cases: list[WorkflowCase], candidates: int, api_key: str | None = None,
           restart=None) -> dict:
    """The replay; with `restart` (a callable that restarts the service), consolidate + approve + restart
    between the corrections and the paraphrases."""
    para = load_paraphrases()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    run = uuid.uuid4().hex[:8]
    params = {"candidates": candidates, "cache": "false"}
    first, paraphrased, cited, reference, case_ms, plan_ms = [], [], [], [], [], []
    corrections: dict[str, list[str]] = {}
    per_case = []
    with httpx.Client(timeout=900, headers=headers) as http:
        for c in cases:
            tid = f"bench-{run}-{c.id.rsplit('/', 1)[-1]}"
            r = http.post(f"{url}/v1/tickets", params=params, json={**ticket_of(c), "id": tid})
            r.raise_for_status()
            first.append([s["text"] for s in r.json()["workflow"]["steps"] if s["kind"] != "terminal"])
            steps = c.reference_steps[:MAX_STEPS]
            fb = http.post(f"{url}/v1/tickets/{tid}/feedback", json={"verdict": "edit", "steps": steps})
            if fb.status_code != 201:
                raise SystemExit(f"{c.id}: feedback refused: HTTP {fb.status_code} {fb.text[:300]}")
            corrections[c.id] = [s["text"] for s in fb.json()["workflow"]["steps"] if s["kind"] != "terminal"]
            per_case.append({"id": c.id, "ticket_id": tid})
            print(f"[{len(per_case)}/{len(cases)}] ticket + correction: {c.id}", flush=True)
        consolidation = consolidate_and_restart(http, url, restart) if restart else None
        for c, row in zip(cases, per_case):
            p = para[c.id]
            r = http.post(f"{url}/v1/tickets", params=params, json={"title": p["title"], "description": p["description"]})
            r.raise_for_status()
            body = r.json()
            paraphrased.append([s["text"] for s in body["workflow"]["steps"] if s["kind"] != "terminal"])
            ids = [s["ticket_id"] for s in body.get("similar_cases", [])]
            cited.append(row["ticket_id"] in ids)
            reference.append(body["knowledge"].get("reference") == f"case:{row['ticket_id']}")
            case_ms.append(body["timings_ms"].get("cases", 0.0))
            plan_ms.append(body["timings_ms"].get("plan", 0.0))
            row.update(similar_cases=body.get("similar_cases", []), reference=body["knowledge"].get("reference"),
                       context_ids=body.get("context_ids", []), knowledge_version=body.get("knowledge_version"))
            print(f"[{len(cited)}/{len(cases)}] paraphrase: {c.id}: cited {cited[-1]}, followed {reference[-1]}",
                  flush=True)
    refs = [corrections[c.id] for c in cases]
    after = step_scores(list(zip(paraphrased, refs)))
    before = step_scores(list(zip(first, refs)))
    for row, a, b in zip(per_case, after, before):
        row.update(f1_paraphrase=round(a.f1, 1), f1_first=round(b.f1, 1))
    return {
        "cases": len(cases), "candidates": candidates,
        "f1_paraphrase_vs_correction": round(statistics.fmean(s.f1 for s in after), 2),
        "f1_first_answer_vs_correction": round(statistics.fmean(s.f1 for s in before), 2),
        "cited_pct": round(100 * sum(cited) / len(cited), 1),
        "followed_as_reference_pct": round(100 * sum(reference) / len(reference), 1),
        "case_retrieval_ms": {"p50": _pct(case_ms, 0.5), "p90": _pct(case_ms, 0.9)},
        "plan_ms_p50": _pct(plan_ms, 0.5),
        "consolidation": consolidation,
        "per_case": per_case,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running service (its knowledge base must not hold the benchmark's runbooks)")
    ap.add_argument("--runbooks", type=Path, default=RUNBOOKS)
    ap.add_argument("--candidates", type=int, default=1, help="best-of-N of every ticket")
    ap.add_argument("--cases", type=int, default=N_CASES)
    ap.add_argument("--consolidate", action="store_true",
                    help="consolidate + approve + restart the service before the paraphrases (not with --url)")
    ap.add_argument("--calibrate", action="store_true", help="offline similarity thresholds, no service")
    ap.add_argument("--out", type=Path, help="write the JSON report here")
    args = ap.parse_args(argv)
    if not args.runbooks.exists():
        print(f"runbooks not found at {args.runbooks}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.calibrate:
        print(json.dumps(calibrate(args.runbooks), indent=2))
        return 0
    if args.consolidate and args.url:
        print("--consolidate restarts the service, so it needs the service this script starts (drop --url)",
              file=sys.stderr)
        return 2
    cases = bench_cases(args.runbooks, args.cases)
    t0 = time.perf_counter()
    if args.url:
        report = replay(args.url, cases, args.candidates, os.environ.get("FLOWROUTER_API_KEY"))
    else:
        with Service(cases, args.runbooks, args.candidates) as svc:
            report = replay(svc.url, cases, args.candidates, restart=svc.restart if args.consolidate else None)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(json.dumps({k: v for k, v in report.items() if k != "per_case"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
