"""Build the Serve application from a FlowRouterConfig: one deployment per model, plus the ingress.

Every deployment carries a version computed from what its replicas are built from (its own
config section, the files it reads, the source of its deployment module). Re-running `serve.run`
with a changed config (cluster/deploy.py adds an expert to the running app) then restarts only the
deployments whose inputs changed: the new expert starts, the ingress rolls (it gains a handle), and
the classifier, scorer and other planners keep their warm replicas. Without a version Serve would
treat every deployment as new and reload every model.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from pathlib import Path

from ray.serve import Application

from core.config import FlowRouterConfig
from deployments.classifier import ClassifierDeployment
from deployments.ingress import Ingress
from deployments.options import ingress_options, model_deployment_options
from deployments.planner import PlannerDeployment
from deployments.scorer import ScorerDeployment

log = logging.getLogger(__name__)


def planner_deployment_name(expert: str) -> str:
    return f"planner-{expert}"


def _file_digest(path: str | Path) -> str:
    p = Path(path)
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else str(p)
    except OSError:
        return str(p)


def deployment_version(cls, *parts) -> str:
    """Hash of the deployment class's module source and the JSON of `parts` (what its replicas use)."""
    try:
        source = _file_digest(inspect.getsourcefile(getattr(cls, "func_or_class", cls)) or "")
    except TypeError:
        source = ""
    blob = json.dumps([source, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _versioned(deployment, options: dict, version: str):
    """`deployment.options(**options)` with a fixed version (Serve's own option, set the way Serve sets it
    internally); falls back to Serve-managed versions if this Ray refuses it."""
    try:
        return deployment.options(**options, version=version, _internal=True)
    except (TypeError, ValueError) as exc:  # a Ray without the option: every serve.run restarts everything
        log.warning("deployment versions unavailable (%s): updates will restart every replica", exc)
        return deployment.options(**options)


def build_app(cfg: FlowRouterConfig, knowledge_dir: str | None = None) -> Application:
    """`cfg.serve.state_dir` must be set (the CLI resolves it) so every replica shares one state folder."""
    if not cfg.serve.state_dir:
        raise ValueError("serve.state_dir must be resolved before building the app")
    config = cfg.model_dump(mode="json")
    # The classifier LLM's adapter is its user_config, not part of its version: a new adapter is loaded by
    # the running replicas (ClassifierDeployment.reconfigure) instead of restarting them.
    cls_opts = {**model_deployment_options(cfg.classifier.model, "classifier"),
                "user_config": {"adapter": cfg.classifier.model.adapter}}
    tasks = cfg.tasks.model_dump(mode="json")
    cls_section = {**config["classifier"], "model": {**config["classifier"]["model"], "adapter": None}}
    classifier = _versioned(ClassifierDeployment, cls_opts, deployment_version(
        ClassifierDeployment, cls_section, tasks,
        [_file_digest(cfg.tasks.tasks)] + [_file_digest(p) for p in cfg.tasks.examples])).bind(config)
    planners = {}
    cases, cases_dir = cfg.cases.model_dump(mode="json"), cfg.cases.store_dir(cfg.serve.state_dir)
    for e in cfg.experts:
        spec, planner = e.model_dump(mode="json"), cfg.planner.model_dump(mode="json")
        opts = model_deployment_options(e, planner_deployment_name(e.name))
        relevance = cfg.knowledge.min_relevance
        planners[e.name] = _versioned(PlannerDeployment, opts, deployment_version(
            PlannerDeployment, spec, planner, knowledge_dir, relevance, cases, cases_dir)).bind(
            spec, planner, knowledge_dir, relevance, cases, cases_dir)
    scorer_cfg = cfg.scorer.model_dump(mode="json")
    scorer = _versioned(ScorerDeployment, model_deployment_options(cfg.scorer.model, "scorer"),
                        deployment_version(ScorerDeployment, scorer_cfg)).bind(scorer_cfg)
    return _versioned(Ingress, ingress_options(cfg.serve, cfg.flood),
                      deployment_version(Ingress, config, knowledge_dir)).bind(config, classifier, planners, scorer,
                                                                               knowledge_dir)
