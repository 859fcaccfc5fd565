"""The operator console: one static page served by the ingress at `/`, plus the little data it needs
beyond the public API (leaderboard results, ticket-store counts).

The page (console_static/) talks to the same API as any client, with the operator's API key, and
renders flowcharts with mermaid.js (`securityLevel: 'strict'`). mermaid.min.js is fetched from the npm
registry at install time (`make` puts it under .cache/console/), never committed; without it the page
shows the workflow as numbered text. Everything that comes from tickets or models is placed in the page
as text (textContent), and the page is served with a Content-Security-Policy that forbids inline
scripts, so even a slip would not execute.

No `from __future__ import annotations`: FastAPI inside the Serve replica needs real annotations.
"""


import json
import os
import sqlite3
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, Field

from core.auth_config import ConsoleConfig
from core.paths import cache_dir

STATIC_DIR = Path(__file__).resolve().parent / "console_static"
REPO_ROOT = Path(__file__).resolve().parents[1]
MERMAID_DIR = REPO_ROOT / ".cache" / "console"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"content-security-policy": CSP, "cache-control": "no-cache", "x-frame-options": "DENY",
                "referrer-policy": "no-referrer", "x-content-type-options": "nosniff"}

_STATE: dict = {"config": ConsoleConfig(), "state_dir": None, "auth_mode": "keys"}


def find_mermaid(cfg: ConsoleConfig) -> Path | None:
    """mermaid.min.js: the config's path, $FLOWROUTER_MERMAID_JS, or the newest copy under .cache/console/."""
    for candidate in (cfg.mermaid_js, os.environ.get("FLOWROUTER_MERMAID_JS")):
        if candidate:
            p = Path(candidate)
            return p if p.is_file() else None
    found = sorted(MERMAID_DIR.glob("mermaid-*.min.js"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def find_leaderboard(cfg: ConsoleConfig) -> Path | None:
    """The leaderboard folder to show: the configured one, else the newest under <cache>/leaderboards/."""
    if cfg.leaderboard_dir:
        p = Path(cfg.leaderboard_dir)
        return p if p.is_dir() else None
    runs = [p.parent for p in (cache_dir() / "leaderboards").glob("*/summary.json")]
    return max(runs, key=lambda p: (p / "summary.json").stat().st_mtime) if runs else None


def configure(cfg: ConsoleConfig, state_dir: str | None, auth_mode: str) -> None:
    _STATE.update(config=cfg, state_dir=state_dir, auth_mode=auth_mode)


router = APIRouter()


@router.get("/", response_class=HTMLResponse, tags=["console"], summary="Operator console (web page)")
async def console_page() -> HTMLResponse:
    if not _STATE["config"].enabled:
        raise HTTPException(404, "the console is disabled (console.enabled: false)")
    return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)


@router.get("/tickets/{ticket_id}", response_class=HTMLResponse, tags=["console"],
            summary="The console opened on one ticket (its flowchart); the link webhook messages carry")
async def console_ticket_page(ticket_id: str) -> HTMLResponse:
    # The same static page: app.js reads the id from the path and loads /v1/tickets/{id} with the
    # operator's key, so nothing of the ticket is placed in this response.
    return await console_page()


@router.get("/console/config.json", include_in_schema=False)
async def console_config() -> Response:
    cfg: ConsoleConfig = _STATE["config"]
    body = {"mermaid": find_mermaid(cfg) is not None, "stats_poll_s": cfg.stats_poll_s,
            "auth_mode": _STATE["auth_mode"]}
    return Response(json.dumps(body), media_type="application/json", headers={"cache-control": "no-cache"})


@router.get("/console/{name}", include_in_schema=False)
async def console_asset(name: str) -> Response:
    if not _STATE["config"].enabled:
        raise HTTPException(404, "the console is disabled")
    if name == "mermaid.min.js":
        path = find_mermaid(_STATE["config"])
        if path is None:
            raise HTTPException(404, "mermaid.js is not installed (run `make` to fetch it from the npm registry)")
        return FileResponse(path, media_type="text/javascript; charset=utf-8",
                            headers={"cache-control": "public, max-age=86400"})
    if name not in ASSETS:
        raise HTTPException(404, f"no console asset {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=ASSETS[name], headers={"cache-control": "no-cache"})


class LeaderboardView(BaseModel):
    source: str = Field(description="leaderboard (a results folder was found) or none.")
    directory: str | None = Field(default=None, description="The results folder shown.")
    taskset: str | None = None
    updated: str | None = None
    png: bool = Field(default=False, description="A heatmap PNG is available at /v1/console/leaderboard.png.")
    scores: dict[str, dict[str, float]] = Field(default_factory=dict, description="task -> expert -> score.")
    counts: dict[str, dict[str, int]] = Field(default_factory=dict, description="task -> expert -> items scored.")
    averages: dict[str, float] = Field(default_factory=dict, description="expert -> average over tasks.")
    map_version: str | None = Field(default=None, description="Map the leaderboard derived, if any.")


@router.get("/v1/console/leaderboard", response_model=LeaderboardView, tags=["console"],
            summary="The newest leaderboard results (score matrix) for the console")
async def leaderboard_view() -> LeaderboardView:
    folder = find_leaderboard(_STATE["config"])
    if folder is None:
        return LeaderboardView(source="none")
    view = LeaderboardView(source="leaderboard", directory=str(folder), png=(folder / "leaderboard.png").is_file())
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return view
    for row in summary.get("matrix") or []:
        try:
            task, expert, score = str(row["task"]), str(row["expert"]), float(row["score"])
        except (KeyError, TypeError, ValueError):
            continue
        view.scores.setdefault(task, {})[expert] = score
        if isinstance(row.get("n"), int):
            view.counts.setdefault(task, {})[expert] = row["n"]
    avgs = summary.get("averages")
    if isinstance(avgs, dict):
        view.averages = {str(k): float(v) for k, v in avgs.items() if isinstance(v, (int, float))}
    view.taskset = summary.get("taskset") if isinstance(summary.get("taskset"), str) else None
    view.updated = summary.get("updated") if isinstance(summary.get("updated"), str) else None
    view.map_version = summary.get("map") if isinstance(summary.get("map"), str) else None
    return view


@router.get("/v1/console/leaderboard.png", tags=["console"], summary="The leaderboard heatmap (PNG)",
            responses={200: {"content": {"image/png": {}}, "description": "The heatmap."}},
            response_class=FileResponse)
async def leaderboard_png() -> FileResponse:
    folder = find_leaderboard(_STATE["config"])
    if folder is None or not (folder / "leaderboard.png").is_file():
        raise HTTPException(404, "no leaderboard heatmap yet (run `flowrouter leaderboard build`)")
    return FileResponse(folder / "leaderboard.png", media_type="image/png", headers={"cache-control": "no-cache"})


class Overview(BaseModel):
    tickets: dict[str, int] = Field(description="Tickets in the durable store by status.")
    feedback: dict[str, int] = Field(description="Operator feedback by verdict.")


@router.get("/v1/console/overview", response_model=Overview, tags=["console"],
            summary="Ticket-store totals (tickets by status, feedback by verdict)")
async def overview() -> Overview:
    state_dir = _STATE["state_dir"]
    db = Path(state_dir) / "tickets.sqlite" if state_dir else None
    if db is None or not db.exists():
        return Overview(tickets={}, feedback={})
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        tickets = dict(conn.execute("SELECT status, COUNT(*) FROM tickets GROUP BY status").fetchall())
        feedback = dict(conn.execute("SELECT verdict, COUNT(*) FROM feedback GROUP BY verdict").fetchall())
    except sqlite3.Error:
        tickets, feedback = {}, {}
    finally:
        conn.close()
    return Overview(tickets=tickets, feedback=feedback)


def install(app: FastAPI) -> None:
    app.include_router(router)
