"""Build the Serve application from a FlowRouterConfig: one deployment per model, plus the ingress."""

from __future__ import annotations

from ray.serve import Application

from core.config import FlowRouterConfig
from deployments.classifier import ClassifierDeployment
from deployments.ingress import Ingress
from deployments.options import ingress_options, model_deployment_options
from deployments.planner import PlannerDeployment
from deployments.scorer import ScorerDeployment


def planner_deployment_name(expert: str) -> str:
    return f"planner-{expert}"


def build_app(cfg: FlowRouterConfig, knowledge_dir: str | None = None) -> Application:
    """`cfg.serve.state_dir` must be set (the CLI resolves it) so every replica shares one state folder."""
    if not cfg.serve.state_dir:
        raise ValueError("serve.state_dir must be resolved before building the app")
    config = cfg.model_dump(mode="json")
    classifier = ClassifierDeployment.options(
        **model_deployment_options(cfg.classifier.model, "classifier")).bind(config)
    planners = {
        e.name: PlannerDeployment.options(**model_deployment_options(e, planner_deployment_name(e.name))).bind(
            e.model_dump(mode="json"), cfg.planner.model_dump(mode="json"), knowledge_dir)
        for e in cfg.experts
    }
    scorer = ScorerDeployment.options(**model_deployment_options(cfg.scorer.model, "scorer")).bind(
        cfg.scorer.model_dump(mode="json"))
    return Ingress.options(**ingress_options(cfg.serve, cfg.flood)).bind(config, classifier, planners, scorer,
                                                                         knowledge_dir)
