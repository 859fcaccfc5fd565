"""Terminal rendering of a ticket result: the workflow as numbered boxes with their branches.

Everything printed comes from tickets and models, so control characters (ANSI escape sequences
included) are removed before anything reaches the terminal.
"""

from __future__ import annotations

import re
import shutil
import sys
import textwrap

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

UNICODE = {"tl": "┌", "tr": "┐", "bl": "└", "br": "┘", "h": "─", "v": "│", "down": "▼", "arrow": "─▶",
           "dtl": "◆", "dtr": "◆", "dbl": "◆", "dbr": "◆", "ttl": "╭", "ttr": "╮", "tbl": "╰", "tbr": "╯",
           "tee": "├─", "end": "└─"}
ASCII = {"tl": "+", "tr": "+", "bl": "+", "br": "+", "h": "-", "v": "|", "down": "v", "arrow": "->",
         "dtl": "<", "dtr": ">", "dbl": "<", "dbr": ">", "ttl": "(", "ttr": ")", "tbl": "(", "tbr": ")",
         "tee": "|-", "end": "`-"}


def clean(text: object) -> str:
    """One line of printable text: control and bidi-override characters removed."""
    return re.sub(r"\s+", " ", _CONTROL.sub(" ", str(text))).strip()


def _unicode_ok(stream=None) -> bool:
    enc = (getattr(stream or sys.stdout, "encoding", None) or "").lower()
    return "utf" in enc


def render_workflow(steps: list[dict], edges: list[dict], width: int | None = None,
                    unicode: bool | None = None) -> str:
    """Boxes in reading order: process [box], decision <box> with its labelled branches, terminal (box).

    An arrow joins a step to the next one when the flow goes straight on; any other move is written
    as "-> N" under the step, so every branch is visible without drawing crossing lines.
    """
    g = UNICODE if (_unicode_ok() if unicode is None else unicode) else ASCII
    width = width or min(max(shutil.get_terminal_size((100, 24)).columns, 40), 110)
    inner = width - 6
    steps = [dict(s, kind=str(s["kind"]).split(".")[-1]) for s in steps]
    number = {s["id"]: i + 1 for i, s in enumerate(steps)}
    out_edges: dict[str, list[dict]] = {}
    for e in edges:
        out_edges.setdefault(e["source"], []).append(e)
    lines: list[str] = []
    for i, s in enumerate(steps):
        n = number[s["id"]]
        kind = s["kind"]
        if kind == "decision":
            tl, tr, bl, br = g["dtl"], g["dtr"], g["dbl"], g["dbr"]
        elif kind == "terminal":
            tl, tr, bl, br = g["ttl"], g["ttr"], g["tbl"], g["tbr"]
        else:
            tl, tr, bl, br = g["tl"], g["tr"], g["bl"], g["br"]
        # Change steps alter the system: marked so an operator sees them before running anything.
        prefix = f"{n:>2} " + ("[CHANGE] " if kind == "process" and s.get("action") == "change" else "")
        body = textwrap.wrap(clean(s["text"]), inner - len(prefix)) or [""]
        lines.append(f"  {tl}{g['h'] * (inner + 2)}{tr}")
        for j, chunk in enumerate(body):
            lead = prefix if j == 0 else " " * len(prefix)
            lines.append(f"  {g['v']} {(lead + chunk).ljust(inner)} {g['v']}")
        lines.append(f"  {bl}{g['h'] * (inner + 2)}{br}")
        outs = out_edges.get(s["id"], [])
        nxt = steps[i + 1]["id"] if i + 1 < len(steps) else None
        straight = len(outs) == 1 and not outs[0].get("label") and outs[0]["target"] == nxt
        if kind == "decision" or (outs and not straight):
            for k, e in enumerate(outs):
                mark = g["end"] if k == len(outs) - 1 else g["tee"]
                label = clean(e.get("label") or "then")
                target = number.get(e["target"], "?")
                lines.append(f"      {mark} {label} {g['arrow']} {target}")
        if straight:
            mid = " " * (inner // 2 + 3)
            lines.append(f"{mid}{g['v']}")
            lines.append(f"{mid}{g['down']}")
    return "\n".join(lines)


def knowledge_line(result: dict) -> str:
    """What the workflow was grounded in: the runbooks shown, or that none matched."""
    k = result.get("knowledge") or {}
    status = k.get("status", "matched" if result.get("context_ids") else "none matched")
    if status != "matched":
        return clean(f"{status}: the workflow is the model's own, not from a runbook")
    items = [f"{clean(i.get('title', i.get('id')))} ({clean(i.get('source') or i['kind'])})" for i in k.get("items", [])
             if i.get("kind") == "node"] or [clean(x) for x in result.get("context_ids", [])]
    scope = "" if k.get("scope", "unscoped") == "unscoped" else f" [{clean(k['scope'])}]"
    return ", ".join(items) + scope


def render_result(result: dict, mermaid: bool = True, unicode: bool | None = None) -> str:
    best = result["candidates"][result["best_index"]]["scores"]
    wf = result["workflow"]
    lines = [
        f"ticket   {clean(result['ticket_id'])}",
        f"task     {clean(result['task'])} (confidence {result['confidence']:.2f}, decided by "
        f"{clean(result['decision_path'])})",
        f"expert   {clean(result['expert'])}   map {clean(result['map_version'])}   "
        f"candidates {len(result['candidates'])}   best score {best['overall']:.2f}/5",
    ]
    dims = ("relevance", "coverage", "accuracy", "coherence", "conciseness")
    lines.append("scores   " + "  ".join(f"{d} {best[d]:.2f}" for d in dims if best.get(d) is not None))
    lines.append("knowledge " + knowledge_line(result))
    if result.get("shared"):
        lines.append(f"shared   {clean(result['shared'])}")
    lines += ["", render_workflow(wf["steps"], wf["edges"], unicode=unicode), ""]
    if mermaid:
        lines += ["Mermaid:", *[_CONTROL.sub(" ", ln) for ln in wf["mermaid"].splitlines()], ""]
    lines.append("timings (ms): " + ", ".join(f"{clean(k)} {v:.0f}" for k, v in result["timings_ms"].items()))
    return "\n".join(lines)
