"""Versioned training output: `<out>/<expert root>/v0001/`, adapter metadata, the training report.

A job writes into `.v0001.partial/` and renames it to `v0001/` only when it succeeded, so a folder
named `vNNNN` always holds a finished run; a failed run is kept as `vNNNN.failed/` with its error
for inspection and never served. Each adapter folder carries `flowrouter-adapter.json`: what it was
trained from (base, parent adapter), on what (data counts), when (iteration, version) and how well.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import importlib.metadata as md
import json
import re
from pathlib import Path

META_FILE = "flowrouter-adapter.json"
_VERSION = re.compile(r"^\.?v(\d{4})(?:\.partial|\.failed)?$")
_SUFFIX = re.compile(r"-v\d+$")


def expert_root(name: str) -> str:
    """The expert a trained version descends from: `smollm2-generalist-v3` -> `smollm2-generalist`."""
    return _SUFFIX.sub("", name)


def versioned_name(root: str, version: int) -> str:
    suffix = f"-v{version}"
    return root[: 63 - len(suffix)] + suffix


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def reserve_version(out_root: str | Path, root: str) -> tuple[int, Path]:
    """The next version number for `root` and its (new, empty) partial folder; safe across processes."""
    base = Path(out_root) / root
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        used = [int(m.group(1)) for p in base.iterdir() if (m := _VERSION.match(p.name))]
        version = max(used, default=0) + 1
        partial = base / f".v{version:04d}.partial"
        partial.mkdir()
    return version, partial


def finish(partial: Path, ok: bool) -> Path:
    """Rename a partial folder to `vNNNN` (success) or `vNNNN.failed`."""
    m = _VERSION.match(partial.name)
    if not m:
        raise ValueError(f"{partial} is not a partial version folder")
    final = partial.with_name(f"v{m.group(1)}" + ("" if ok else ".failed"))
    partial.rename(final)
    return final


def versions(out_root: str | Path, root: str) -> list[Path]:
    """Finished versions of `root`, oldest first."""
    base = Path(out_root) / root
    if not base.exists():
        return []
    return sorted(p for p in base.iterdir() if re.fullmatch(r"v\d{4}", p.name))


def write_metadata(adapter_dir: str | Path, meta: dict) -> None:
    Path(adapter_dir, META_FILE).write_text(json.dumps(meta, indent=2, default=str))


def rebase_paths(obj, old: str, new: str):
    """`obj` with every string starting with `old` re-rooted at `new` (paths written before a rename)."""
    if isinstance(obj, str):
        return new + obj[len(old):] if obj.startswith(old) else obj
    if isinstance(obj, list):
        return [rebase_paths(x, old, new) for x in obj]
    if isinstance(obj, dict):
        return {k: rebase_paths(v, old, new) for k, v in obj.items()}
    return obj


def library_versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "trl", "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


# ---- report -------------------------------------------------------------------------------------
def plot_report(metrics: dict, path: str | Path) -> Path:
    """Reward and loss curves of both stages across iterations, and held-out quality per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [it for it in metrics.get("iterations", []) if it.get("iteration", 0) > 0]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    (ax_r, ax_l), (ax_d, ax_q) = axes

    def series(stage: str, key: str):
        xs, ys, bounds, x = [], [], [], 0
        for it in its:
            for row in it.get(stage, {}).get("history", []):
                if key in row:
                    xs.append(x + row["step"])
                    ys.append(row[key])
            x += it.get(stage, {}).get("steps", 0)
            bounds.append(x)
        return xs, ys, bounds[:-1]

    for key, label in (("reward", "total reward"), ("rewards/scorer_reward/mean", "Scorer reward (0-1)"),
                       ("rewards/format_reward/mean", "valid-workflow reward")):
        xs, ys, bounds = series("rl", key)
        if xs:
            ax_r.plot(xs, ys, marker=".", label=label)
    for b in series("rl", "reward")[2]:
        ax_r.axvline(b + 0.5, color="grey", linestyle=":")
    ax_r.set_title("Planner RL (GRPO): rewards per step")
    ax_r.set_xlabel("optimizer step (dotted: next iteration)")
    ax_r.legend(fontsize=8)

    for key, label in (("loss", "GRPO loss"), ("kl", "KL to reference")):
        xs, ys, _ = series("rl", key)
        if xs:
            ax_l.plot(xs, ys, marker=".", label=label)
    ax_l.set_title("Planner RL: loss and KL")
    ax_l.set_xlabel("optimizer step")
    ax_l.legend(fontsize=8)

    for key, label in (("loss", "DPO loss"), ("rewards/accuracies", "reward accuracy"),
                       ("rewards/margins", "reward margin")):
        xs, ys, _ = series("dpo", key)
        if xs:
            ax_d.plot(xs, ys, marker=".", label=label)
    ax_d.set_title("Scorer DPO")
    ax_d.set_xlabel("optimizer step")
    ax_d.legend(fontsize=8)

    all_its = metrics.get("iterations", [])
    f1 = [(it["iteration"], it["holdout"]["f1"]) for it in all_its if it.get("holdout")]
    agr = [(it["iteration"], 100 * it["agreement"]["pairwise"]) for it in all_its
           if it.get("agreement") and it["agreement"].get("pairwise") is not None]
    if f1:
        ax_q.plot(*zip(*f1), marker="o", label="held-out STEPScore F1")
    if agr:
        ax_q.plot(*zip(*agr), marker="s", label="Scorer agreement with g>f>p (%)")
    ax_q.set_ylim(0, 100)
    ax_q.set_xlabel("iteration")
    ax_q.set_title("Held-out quality")
    ax_q.legend(fontsize=8)
    fig.suptitle(f"Coevolution training of {metrics.get('expert')} v{metrics.get('version')}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_classifier_report(metrics: dict, path: str | Path) -> Path:
    """Classifier fine-tuning: the SFT loss per step, and dev accuracy per mode with the serving LLM and with
    the adapter (the gate's mode first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    hist = (metrics.get("sft") or {}).get("history") or []
    pts = [(r["step"], r["loss"]) for r in hist if "loss" in r]
    if pts:
        ax_l.plot(*zip(*pts), marker=".", label="completion loss")
    acc = [(r["step"], r["mean_token_accuracy"]) for r in hist if "mean_token_accuracy" in r]
    if acc:
        ax_l.plot(*zip(*acc), marker=".", label="label token accuracy")
    ax_l.set_xlabel("optimizer step")
    ax_l.set_title("classifier SFT (LoRA)")
    ax_l.legend(fontsize=8)
    serving, candidate = metrics.get("serving") or {}, metrics.get("candidate") or {}
    modes = [m for m in candidate if isinstance(candidate.get(m), dict) and "accuracy" in candidate[m]]
    if modes:
        xs = range(len(modes))
        before = [100 * (serving.get(m) or {}).get("accuracy", 0.0) for m in modes]
        after = [100 * candidate[m]["accuracy"] for m in modes]
        ax_a.bar([x - 0.2 for x in xs], before, width=0.4, label="serving LLM")
        ax_a.bar([x + 0.2 for x in xs], after, width=0.4, label="with the adapter")
        for x, b, a in zip(xs, before, after):
            ax_a.text(x - 0.2, b + 1, f"{b:.1f}", ha="center", fontsize=8)
            ax_a.text(x + 0.2, a + 1, f"{a:.1f}", ha="center", fontsize=8)
        ax_a.set_xticks(list(xs), modes)
        ax_a.set_ylim(0, 105)
        ax_a.legend(fontsize=8, loc="lower right")
    d = metrics.get("data") or {}
    ax_a.set_title(f"dev accuracy (%), n={d.get('dev')}")
    fig.suptitle(f"Classifier fine-tuning of {metrics.get('model')} v{metrics.get('version')} "
                 f"({d.get('source')}, {d.get('train')} training examples)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
