"""End to end: a classifier adapter is published into the running service (the session `service`) and its
classifier answers with it at once, in the same replica process (reconfigured, not restarted); the base
weights are restored afterwards, so the session service is left as it was found.

A real adapter is trained (two SFT steps of SmolLM2 on two rows at a high learning rate, so its effect on
the label distribution is visible); the gate's verdict is fixed by the metrics handed to `decide`, as
tests/cluster/test_publish_e2e.py does for Planner adapters. The classifier deployment is asked through a
Serve handle from a driver connected to the service's Ray, as `ServicePublisher` does.
"""

from __future__ import annotations

import contextlib

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, smollm2, embedder):
    from core.config import load_config
    from core.training_config import ClassifierSFTConfig
    from experts.engines.weights import resolve_weights
    from router.classifier import TaskClassifier
    from router.examples import ExampleIndex, load_examples, load_tasks
    from training.classifier_data import sft_rows, split_examples
    from training.classifier_sft import train_classifier_sft

    cfg = load_config()
    c = cfg.classifier
    train, dev = split_examples(load_examples(cfg.tasks.examples), 0.2, seed=0)
    index = ExampleIndex(train, embedder, c.lexical_weight)
    rows = sft_rows(TaskClassifier(c, load_tasks(cfg.tasks.tasks), index, smollm2).prompt, index, train[:2], c.top_k)
    out = tmp_path_factory.mktemp("classifier-adapter") / "v0001" / "adapter"
    train_classifier_sft(weights=resolve_weights(c.model.base), init_adapter=None, out_dir=out, rows=rows,
                         encode=smollm2.split_continuation,
                         cfg=ClassifierSFTConfig(batch_size=1, learning_rate=5e-3), seed=0, steps=2)
    # New tickets (the service retrieves from every labeled example, dev included, so a dev text would find
    # itself and retrieval alone would decide): vague ones and shortened dev tickets, which the cascade sends
    # to the LLM.
    vague = ["something is slow since this morning", "users report errors on the portal",
             "the nightly job did not finish", "alerts firing on several hosts"]
    return str(out), vague + [" ".join(q.text.split()[:5]) for q in dev[:4]]


@contextlib.contextmanager
def classifier_handle(svc):
    import ray
    from ray import serve

    from cluster.deploy import deployed_config
    from cluster.ray_connect import connect_ray

    _, _, address = deployed_config(svc.cfg)
    connect_ray(address, "flowrouter")
    try:
        yield serve.get_deployment_handle("classifier", app_name=svc.cfg.serve.app_name)
    finally:
        ray.shutdown()


def _ask(handle, texts):
    from core.schemas import ClassifyRequest

    info = handle.info.remote().result(timeout_s=120)
    out = [handle.classify.remote(ClassifyRequest(text=t)).result(timeout_s=300).classification for t in texts]
    return info, out


def test_published_adapter_serves_in_the_running_classifier_without_a_restart(service, adapter):
    from cluster.publish import ServicePublisher
    from router.examples import load_tasks
    from training.classifier_job import decide, publish, set_adapter

    path, texts = adapter
    svc = service
    pub = ServicePublisher(svc.cfg, api_key=svc.keys["admin"])
    pub.check()
    with classifier_handle(svc) as h:
        info0, base = _ask(h, texts)
    assert info0["adapter"] is None
    asked = [i for i, r in enumerate(base) if r.decided_by.startswith("llm")]
    assert asked, "no probe ticket reached the LLM in the cascade"

    tasks = [t.name for t in load_tasks(svc.cfg.tasks.tasks)]
    metrics = {"status": "ok", "version": 1, "gate_mode": "cascade", "tasks": tasks,
               "serving": {"cascade": {"accuracy": 0.50}}, "candidate": {"cascade": {"accuracy": 0.60}, "adapter": path}}
    assert not publish(decide(svc.cfg.classifier.model, metrics, min_improvement=20), pub).published  # gate says no
    decision = decide(svc.cfg.classifier.model, metrics)
    assert decision.promote
    try:
        report = publish(decision, pub)
        assert report.published and report.previous_adapter is None
        assert report.serving and all(i["adapter"] == path for i in report.serving)
        with classifier_handle(svc) as h:
            info1, tuned = _ask(h, texts)
        # The same replica process loaded the adapter (Serve reconfigure, no restart), and answers with it.
        assert info1["adapter"] == path and info1["pid"] == info0["pid"] and info1["loaded_at"] > info0["loaded_at"]
        assert info1["fingerprint"] != info0["fingerprint"]
        moved = max(abs(tuned[i].distribution[t] - base[i].distribution[t]) for i in asked for t in tasks)
        assert moved > 1e-3, "the LLM-decided tickets' distributions did not change with the adapter"
        assert pub.live_config().classifier.model.adapter == path  # recorded: later deploys keep it
        assert svc.get("/healthz").status_code == 200
    finally:
        back = set_adapter(pub, None)
    assert back.published and all(i["adapter"] is None for i in back.serving)
    with classifier_handle(svc) as h:
        info2, again = _ask(h, texts)
    assert info2["pid"] == info0["pid"] and info2["adapter"] is None
    for a, b in zip(again, base):
        assert a.task == b.task and max(abs(a.distribution[t] - b.distribution[t]) for t in tasks) < 1e-4
