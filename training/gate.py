"""Gate and publish: a trained adapter serves only if it beats the serving one on held-out cases.

Promotion of a Planner adapter adds it to the live service as an *additional expert* named
`<root>-v<version>` (e.g. `smollm2-generalist-v3`) next to the one it beat:

1. the gate compares held-out STEPScore F1 of the serving Planner (iteration 0 of the job) with the
   trained one (last iteration); strictly better by `gate.min_improvement` points, or nothing happens;
2. the live app config gains the new expert (ModelSpec with `adapter=`) and, when the trained Scorer
   orders held-out good/fair/poor workflows better than the serving one, the Scorer's adapter; the
   updated app is applied to the running cluster with `serve.run` (Serve replaces replicas one batch
   at a time; in-flight requests finish on the old ones);
3. once the new deployment answers, the map is regenerated from the live one (every task routed to
   the beaten expert, and the `unknown` fallback if it was that expert, now routes to the new one)
   and published through `POST /v1/map`: requests in flight keep their map, new ones use the new one.

The beaten expert stays deployed, so `POST /v1/map/rollback` returns to it instantly; versions of
the same root older than the one beaten are retired on the next promotion. Anything that fails before
step 3 leaves the live map as it was; a training job that fails never reaches step 1.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Protocol

from core.config import FlowRouterConfig, ModelSpec
from core.task_map import TaskMap
from training.artifacts import expert_root, versioned_name

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """The live service could not be reached or refused the new expert or map."""


@dataclass
class GateDecision:
    expert: str
    promote: bool
    reason: str
    serving_f1: float | None = None
    candidate_f1: float | None = None
    promote_scorer: bool = False
    scorer_reason: str = ""
    serving_agreement: float | None = None
    candidate_agreement: float | None = None
    new_expert: ModelSpec | None = None
    scorer_adapter: str | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["new_expert"] = self.new_expert.model_dump(mode="json") if self.new_expert else None
        return d


def decide(serving: ModelSpec, metrics: dict | None, min_improvement: float = 0.0) -> GateDecision:
    """Promote the trained Planner only when its held-out F1 beats the serving one's (ties keep the
    serving one); promote the trained Scorer only when its held-out agreement is strictly higher."""
    if not metrics or metrics.get("status") != "ok":
        err = (metrics or {}).get("error", "no result")
        return GateDecision(serving.name, False, f"training failed: {err}")
    s_f1 = (metrics.get("serving") or {}).get("f1")
    c_f1 = (metrics.get("candidate") or {}).get("f1")
    s_ag = ((metrics.get("serving") or {}).get("agreement") or {}).get("pairwise")
    c_ag = ((metrics.get("candidate") or {}).get("agreement") or {}).get("pairwise")
    d = GateDecision(serving.name, False, "", s_f1, c_f1, serving_agreement=s_ag, candidate_agreement=c_ag)
    if s_f1 is None or c_f1 is None:
        d.reason = "no held-out evaluation (gate off): not promoted"
    elif c_f1 > s_f1 + min_improvement:
        d.promote = True
        d.reason = f"held-out STEPScore F1 {s_f1:.2f} -> {c_f1:.2f} (needs > +{min_improvement:g})"
        d.new_expert = promoted_spec(serving, metrics)
    else:
        d.reason = f"held-out STEPScore F1 {s_f1:.2f} -> {c_f1:.2f}: does not beat the serving adapter " \
                   f"by more than {min_improvement:g}; keeping {serving.name}"
    cand_scorer = (metrics.get("candidate") or {}).get("scorer_adapter")
    if cand_scorer and cand_scorer != (metrics.get("serving") or {}).get("scorer_adapter") and \
            s_ag is not None and c_ag is not None and c_ag > s_ag:
        d.promote_scorer, d.scorer_adapter = True, cand_scorer
        d.scorer_reason = f"held-out agreement with good>fair>poor {s_ag:.3f} -> {c_ag:.3f}"
    else:
        d.scorer_reason = f"Scorer kept (agreement {s_ag} -> {c_ag})"
    return d


def promoted_spec(serving: ModelSpec, metrics: dict) -> ModelSpec:
    """The serving expert's spec with the trained adapter, under the versioned name."""
    name = versioned_name(expert_root(serving.name), int(metrics["version"]))
    desc = (f"{serving.description} [trained: {expert_root(serving.name)} v{metrics['version']}, "
            f"{metrics.get('algorithms', {}).get('planner', 'grpo')} LoRA]").strip()
    return serving.model_copy(update={"name": name, "adapter": metrics["candidate"]["planner_adapter"],
                                      "description": desc})


def regenerate_map(live: TaskMap, replace: dict[str, str], source: str) -> TaskMap | None:
    """The live map with every route (and the fallback) to a beaten expert moved to its successor;
    None when the live map routes nothing to any of them."""
    routes = {t: replace.get(e, e) for t, e in live.routes.items()}
    fallback = replace.get(live.fallback, live.fallback)
    if routes == live.routes and fallback == live.fallback:
        return None
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    digest = hashlib.sha256(json.dumps([routes, fallback], sort_keys=True).encode()).hexdigest()[:6]
    return TaskMap(version=f"train-{stamp}-{digest}", routes=routes, fallback=fallback, source=source,
                   scores=live.scores)


def serving_spec(cfg: FlowRouterConfig, live_map: TaskMap | None, name: str) -> ModelSpec:
    """The expert that serves `name`'s root now: the newest version of it the live map routes to,
    else `name` itself (KeyError when neither is deployed)."""
    root = expert_root(name)
    family = [e for e in cfg.experts if expert_root(e.name) == root]
    if live_map is not None:
        routed = set(live_map.routes.values()) | {live_map.fallback}
        live = [e for e in family if e.name in routed]
        if live:
            return max(live, key=lambda e: _version_of(e.name))
    return cfg.expert(name)


def _version_of(name: str) -> int:
    tail = name.rsplit("-v", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 0


def updated_config(live: FlowRouterConfig, decisions: list[GateDecision]) -> FlowRouterConfig:
    """The live config with promoted experts added (right after the expert each beat) and the best
    promoted Scorer adapter. Nothing is removed here (see `retired_config`)."""
    experts = list(live.experts)
    for d in decisions:
        if not d.promote or d.new_expert is None:
            continue
        experts = [e for e in experts if e.name != d.new_expert.name]
        at = next((i for i, e in enumerate(experts) if e.name == d.expert), len(experts) - 1)
        experts.insert(at + 1, d.new_expert)
    cfg = live.model_copy(deep=True)
    cfg.experts = experts
    scorers = [d for d in decisions if d.promote_scorer]
    if scorers:
        best = max(scorers, key=lambda d: d.candidate_agreement or 0.0)
        cfg.scorer.model = cfg.scorer.model.model_copy(update={"adapter": best.scorer_adapter})
    return FlowRouterConfig.model_validate(cfg.model_dump(mode="json", exclude={"source"}))


def retired_config(cfg: FlowRouterConfig, decisions: list[GateDecision], live_map: TaskMap) -> FlowRouterConfig:
    """`cfg` without trained versions superseded by this run's promotions: per promoted root, the root
    itself (version 0, named by the configured map), the new version, the one it beat and anything
    the live map still routes to stay."""
    routed = set(live_map.routes.values()) | {live_map.fallback}
    keep = set(routed)
    roots = {}
    for d in decisions:
        if d.promote and d.new_expert is not None:
            keep |= {d.expert, d.new_expert.name}
            roots[expert_root(d.expert)] = _version_of(d.new_expert.name)
    experts = [e for e in cfg.experts if e.name in keep or expert_root(e.name) not in roots
               or _version_of(e.name) == 0 or _version_of(e.name) > roots[expert_root(e.name)]]
    if len(experts) == len(cfg.experts):
        return cfg
    return FlowRouterConfig.model_validate({**cfg.model_dump(mode="json", exclude={"source"}),
                                            "experts": [e.model_dump(mode="json") for e in experts]})


# ---- publishing ---------------------------------------------------------------------------------
class Publisher(Protocol):
    def live_config(self) -> FlowRouterConfig: ...

    def current_map(self) -> TaskMap: ...

    def deploy(self, cfg: FlowRouterConfig) -> None: ...

    def publish_map(self, task_map: TaskMap) -> dict: ...


@dataclass
class PublishReport:
    deployed: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    scorer_adapter: str | None = None
    map_version: str | None = None
    previous_map: str | None = None
    note: str = ""


def publish(decisions: list[GateDecision], publisher: Publisher) -> PublishReport:
    """Deploy the promoted adapters, switch the map to them, then retire superseded versions.

    Nothing happens without a promotion. The map is published only after the new experts run, and
    experts are retired only after the map no longer routes to them."""
    promoted = [d for d in decisions if d.promote and d.new_expert is not None]
    report = PublishReport()
    if not promoted and not any(d.promote_scorer for d in decisions):
        report.note = "no adapter beat the serving one: the service and its map are unchanged"
        return report
    live = publisher.live_config()
    live_map = publisher.current_map()
    report.previous_map = live_map.version
    grown = updated_config(live, decisions)
    report.deployed = [e.name for e in grown.experts if e.name not in {x.name for x in live.experts}]
    if grown.scorer.model.adapter != live.scorer.model.adapter:
        report.scorer_adapter = grown.scorer.model.adapter
    publisher.deploy(grown)
    replace = {d.expert: d.new_expert.name for d in promoted}
    source = "training: " + "; ".join(f"{d.expert} -> {d.new_expert.name} ({d.reason})" for d in promoted)
    new_map = regenerate_map(live_map, replace, source) if replace else None
    if new_map is not None:
        publisher.publish_map(new_map)
        report.map_version = new_map.version
    elif promoted:
        report.note = "the live map routes no task to the retrained experts: deployed without routing changes"
    final = retired_config(grown, decisions, new_map or live_map)
    if len(final.experts) < len(grown.experts):
        report.retired = [e.name for e in grown.experts if e.name not in {x.name for x in final.experts}]
        publisher.deploy(final)
    return report
