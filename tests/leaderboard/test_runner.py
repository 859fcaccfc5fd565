"""Leaderboard builds with fake engines: results, resume after a failure, add-model, CLI; plus one
real build with SmolLM2 on three MC items."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import yaml

from core.config import ModelSpec
from core.task_map import TaskMap
from experts.engines.base import Engine, Generation
from leaderboard.evaluate import EvalSettings, evaluate_expert, sample_items
from leaderboard.results import ResultStore, read_manifest
from leaderboard.runner import (
    LeaderboardError,
    LeaderboardHooks,
    LeaderboardRunOptions,
    add_model,
    build_leaderboard,
    load_leaderboard,
)
from leaderboard.tasksets import FreeTextItem, MCItem, TaskInfo, TaskSet, WorkflowItem

TASKS = ["net", "db", "app"]


def _taskset(n: int = 4) -> TaskSet:
    items = []
    for t in TASKS:
        for k in range(n):
            items.append(MCItem(id=f"{t}-{k}", task=t, question=f"[{t}] question {k}?",
                                options={"A": "one", "B": "two", "C": "three", "D": "four"},
                                answer=["ABCD"[k % 4]]))
    items.append(MCItem(id="db-multi", task="db", question="[db] pick two (Choose two.)",
                        options={"A": "x", "B": "y", "C": "z"}, answer=["A", "C"], n_stated=2))
    items.append(FreeTextItem(id="app-free", task="app", question="[app] what is a 502?", reference="bad gateway"))
    return TaskSet(name="fake", tasks=[TaskInfo(name=t) for t in TASKS], items=items)


class FakeEngine(Engine):
    """Answers MC items right on the tasks it `knows` (0.7 on the right letter(s)), wrong elsewhere
    (0.7 on the first wrong letter). Free text: `free_text`. Can fail after N label_probs calls."""

    def __init__(self, name: str, knows: set[str], answers: dict[str, list[str]], free_text: str = "bad gateway",
                 fail_after: int | None = None):
        self.name, self.knows, self.answers, self.free_text = name, knows, answers, free_text
        self.fail_after = fail_after
        self.mc_calls = 0
        self.items_seen: list[str] = []
        self.closed = False

    def format_prompt(self, system, user, assistant_prefix=""):
        return f"{system}\n{user}\n{assistant_prefix}"

    def label_probs(self, prompts, labels):
        if self.fail_after is not None and self.mc_calls >= self.fail_after:
            raise RuntimeError("injected engine failure")
        self.mc_calls += 1
        out = []
        letters = [lab.strip() for lab in labels]
        for p in prompts:
            question = next(q for q in self.answers if q in p)
            self.items_seen.append(question)
            task = question[1:question.index("]")]
            right = self.answers[question]
            pick = right if task in self.knows else [next(x for x in letters if x not in right)]
            rest = [x for x in letters if x not in pick]
            dist = {f" {x}": 0.7 / len(pick) for x in pick}
            dist.update({f" {x}": 0.3 / len(rest) for x in rest})
            out.append(dist)
        return out

    def generate(self, prompts, params):
        return [Generation(texts=[self.free_text], tokens=[3]) for _ in prompts]

    def loglikelihood(self, requests):
        return [0.0 for _ in requests]

    def close(self):
        self.closed = True


def _answers(ts: TaskSet) -> dict[str, list[str]]:
    return {i.question: i.answer for i in ts.items if i.kind == "mc"}


class Factory:
    """engine_factory recording which experts were loaded."""

    def __init__(self, ts: TaskSet, knows: dict[str, set[str]], fail_after: dict[str, int] | None = None):
        self.ts, self.knows, self.fail_after = ts, knows, fail_after or {}
        self.built: list[str] = []
        self.engines: dict[str, FakeEngine] = {}

    def __call__(self, spec: ModelSpec) -> FakeEngine:
        self.built.append(spec.name)
        e = FakeEngine(spec.name, self.knows[spec.name], _answers(self.ts), fail_after=self.fail_after.get(spec.name))
        self.engines[spec.name] = e
        return e


def _spec(name: str, prompt: str | None = None) -> ModelSpec:
    return ModelSpec(name=name, base="smollm2-135m-instruct", system_prompt=prompt or f"expert {name}")


def _sim(preds, refs):
    return [1.0 if p == r else 0.0 for p, r in zip(preds, refs)]


KNOWS = {"alpha": {"net", "app"}, "beta": {"db"}, "gamma": {"db", "app"}}
QUIET = LeaderboardRunOptions(progress=False)


def _hooks(factory, **kw) -> LeaderboardHooks:
    return LeaderboardHooks(engine_factory=factory, similarity_fn=_sim, **kw)


def test_build_scores_every_expert_and_derives_the_map(tmp_path):
    ts = _taskset()
    f = Factory(ts, KNOWS)
    run = build_leaderboard(ts, [_spec("alpha"), _spec("beta")], tmp_path,
                            LeaderboardRunOptions(max_items=None, progress=False), hooks=_hooks(f))
    m = run.matrix
    # net: 4 MC. alpha right on all, beta wrong on all.
    assert m.scores["net"] == {"alpha": 1.0, "beta": 0.0}
    # db: 4 single + 1 multi (n_stated=2 -> top-2 of 0.35/0.35/0.3 = A,C -> right for beta)
    assert m.scores["db"] == {"alpha": 0.0, "beta": 1.0}
    # app: 4 MC + 1 free text (both reply "bad gateway" = reference, score 1)
    assert m.scores["app"] == {"alpha": 1.0, "beta": pytest.approx(1 / 5)}
    assert run.task_map.routes == {"net": "alpha", "db": "beta", "app": "alpha"}
    assert run.task_map.fallback == "alpha"  # avg 2/3 vs 0.4
    assert run.evaluated == {"alpha": 14, "beta": 14} and run.reused == {"alpha": 0, "beta": 0}
    assert all(e.closed for e in f.engines.values())
    # files
    assert TaskMap.load(run.map_path).routes == run.task_map.routes
    assert (tmp_path / "leaderboard.png").stat().st_size > 1000 and (tmp_path / "scores.csv").exists()
    assert read_manifest(tmp_path)["taskset"]["version"] == ts.version()
    rows = ResultStore(tmp_path).rows()
    assert len(rows) == 28 and {r["taskset_version"] for r in rows} == {ts.version()}
    assert {r["expert_version"] for r in rows} == {_spec("alpha").fingerprint(), _spec("beta").fingerprint()}
    multi = next(r for r in rows if r["item_id"] == "db-multi" and r["expert"] == "beta")
    assert multi["prediction"] == "A,C" and multi["correct"] and json.loads(multi["detail"])["n_stated"] == 2


def test_rebuild_reuses_everything(tmp_path):
    ts = _taskset()
    build_leaderboard(ts, [_spec("alpha"), _spec("beta")], tmp_path, QUIET, hooks=_hooks(Factory(ts, KNOWS)))
    first_map = load_leaderboard(tmp_path).task_map
    f = Factory(ts, KNOWS)
    run = build_leaderboard(ts, [_spec("alpha"), _spec("beta")], tmp_path, QUIET, hooks=_hooks(f))
    assert f.built == []  # no engine loaded at all
    assert run.evaluated == {"alpha": 0, "beta": 0} and run.reused == {"alpha": 14, "beta": 14}
    assert not run.map_is_new and run.task_map.version == first_map.version


def test_resume_after_injected_failure(tmp_path):
    ts = _taskset(n=6)  # 3 tasks x 6 + 2 extra = 20 items
    specs = [_spec("alpha"), _spec("beta")]
    batch_of_two = LeaderboardRunOptions(settings=EvalSettings(batch_size=2), progress=False)
    # beta's engine dies on its 3rd label_probs call (batch size 2 -> after 4 items)
    broken = Factory(ts, KNOWS, fail_after={"beta": 2})
    with pytest.raises(RuntimeError, match="injected"):
        build_leaderboard(ts, specs, tmp_path, replace(batch_of_two, flush_every=100), hooks=_hooks(broken))
    assert broken.engines["beta"].closed
    store = ResultStore(tmp_path)
    done_alpha = store.done(specs[0].fingerprint(), EvalSettings(batch_size=2).key())
    done_beta = store.done(specs[1].fingerprint(), EvalSettings(batch_size=2).key())
    assert len(done_alpha) == 20 and len(done_beta) == 4  # the partial buffer was flushed on failure
    partial = load_leaderboard(tmp_path)
    assert partial.task_map is None and not partial.complete  # no map derived from an incomplete build
    assert ("net", "beta", 2, 6) in partial.matrix.missing() or partial.matrix.missing()

    healthy = Factory(ts, KNOWS)
    run = build_leaderboard(ts, specs, tmp_path, batch_of_two, hooks=_hooks(healthy))
    assert healthy.built == ["beta"]  # alpha was complete: never loaded again
    assert run.evaluated == {"alpha": 0, "beta": 16} and run.reused == {"alpha": 20, "beta": 4}
    beta_seen = healthy.engines["beta"].items_seen
    assert len(beta_seen) == len(set(beta_seen)) == 15  # 16 left minus the free-text item
    assert run.complete and run.task_map is not None

    # identical to an uninterrupted build
    fresh = build_leaderboard(ts, specs, tmp_path / "fresh", batch_of_two, hooks=_hooks(Factory(ts, KNOWS)))
    assert fresh.matrix.scores == run.matrix.scores and fresh.task_map.routes == run.task_map.routes


def test_add_model_evaluates_only_the_new_expert(tmp_path):
    ts = _taskset()
    build_leaderboard(ts, [_spec("alpha"), _spec("beta")], tmp_path, LeaderboardRunOptions(max_items=3, progress=False),
                      hooks=_hooks(Factory(ts, KNOWS)))
    f = Factory(ts, KNOWS)
    res = add_model(_spec("gamma"), tmp_path, engine_factory=f, similarity_fn=_sim, progress=False)
    assert f.built == ["gamma"]
    assert res.run.evaluated == {"alpha": 0, "beta": 0, "gamma": 9}  # 3 items x 3 tasks (max_items kept)
    # gamma knows db and app: it takes app (tie with alpha at 1.0 broken by higher average: gamma 2/3 vs
    # alpha 2/3 -> name order: alpha keeps app) -- and db ties with beta (1.0): beta 1/3 < gamma 2/3 -> gamma
    assert res.new_map.routes == {"net": "alpha", "db": "gamma", "app": "alpha"}
    assert res.diff.changed == {"db": ("beta", "gamma")} and res.diff.new_experts == ["gamma"]
    assert res.diff.fallback is None  # alpha and gamma tie on average; alpha sorts first
    assert [s["name"] for s in read_manifest(tmp_path)["experts"]] == ["alpha", "beta", "gamma"]
    assert res.new_map.version != res.old_map.version and res.run.map_path.exists()

    # replacing an expert by name: a new fingerprint is evaluated, the old version's rows stay on disk
    f2 = Factory(ts, {**KNOWS, "beta": {"net", "db", "app"}})
    res2 = add_model(_spec("beta", prompt="better prompt"), tmp_path, engine_factory=f2, similarity_fn=_sim,
                     progress=False)
    assert f2.built == ["beta"] and res2.replaced is not None
    assert res2.new_map.fallback == "beta" and set(res2.new_map.routes.values()) == {"beta"}
    assert res2.diff.fallback == ("alpha", "beta")


def test_add_model_needs_an_existing_leaderboard(tmp_path):
    with pytest.raises(LeaderboardError, match="run `leaderboard build` first"):
        add_model(_spec("x"), tmp_path)


def test_classification_only_taskset_is_refused(tmp_path):
    ts = TaskSet(name="clf", tasks=[TaskInfo(name="a")])
    with pytest.raises(LeaderboardError, match="classification only"):
        build_leaderboard(ts, [_spec("alpha")], tmp_path)


def test_sampling_is_deterministic_and_nested():
    ts = _taskset(n=10)
    a = sample_items(ts.items, 3, seed=0)
    assert [i.id for i in a] == [i.id for i in sample_items(list(reversed(ts.items)), 3, seed=0)]
    assert {i.id for i in a} <= {i.id for i in sample_items(ts.items, 5, seed=0)}
    assert sum(1 for i in a if i.task == "db") == 3
    assert len(sample_items(ts.items, None)) == len(ts.items)


def test_workflow_items_use_the_injected_planner(tmp_path, monkeypatch):
    class S:  # STEPScore's 0-100 scale
        def __init__(self, p, r):
            self.precision, self.recall = 100 * p, 100 * r
            self.f1 = 200 * p * r / (p + r) if p + r else 0.0

    monkeypatch.setattr("leaderboard.metrics.step_score",
                        lambda gen, ref: S(len(set(gen) & set(ref)) / len(gen), len(set(gen) & set(ref)) / len(ref)))
    ts = TaskSet(name="wf", tasks=[TaskInfo(name="k8s")],
                 items=[WorkflowItem(id="w1", task="k8s", query="pod crashloop",
                                     reference_steps=["describe pod", "read logs"])])
    plans = {"alpha": ["describe pod", "restart"], "beta": ["describe pod", "read logs"]}
    hooks = LeaderboardHooks(engine_factory=Factory(ts, KNOWS), plan_fn_factory=lambda spec, engine: (lambda q: plans[spec.name]))
    run = build_leaderboard(ts, [_spec("alpha"), _spec("beta")], tmp_path, QUIET, hooks=hooks)
    assert run.matrix.scores["k8s"] == {"alpha": 0.5, "beta": 1.0} and run.task_map.routes == {"k8s": "beta"}


def test_cli_build_show_and_add_model(tmp_path, monkeypatch, capsys):
    import leaderboard.runner as runner
    from cluster.cli import main

    ts = _taskset()
    ts_dir = ts.save(tmp_path / "ts")
    factory = Factory(ts, KNOWS)
    monkeypatch.setattr(runner, "default_engine_factory", factory)
    monkeypatch.setattr("leaderboard.evaluate.cosine_scores", _sim)  # MiniLM is exercised elsewhere
    for name in ("alpha", "beta", "gamma"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_spec(name).model_dump(mode="json")))
    out = tmp_path / "lb"
    rc = main(["leaderboard", "build", "--expert", str(tmp_path / "alpha.yaml"), "--expert",
               str(tmp_path / "beta.yaml"), "--taskset", str(ts_dir), "--max-items", "2", "--out", str(out),
               "--quiet", "--no-plots"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "net" in text and "alpha" in text and "map (new)" in text
    assert main(["leaderboard", "show", "--out", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["map"]["routes"] == {"net": "alpha", "db": "beta", "app": "alpha"}
    assert main(["leaderboard", "add-model", str(tmp_path / "gamma.yaml"), "--out", str(out), "--quiet",
                 "--no-plots"]) == 0
    assert "~ db: beta -> gamma" in capsys.readouterr().out
    assert factory.built == ["alpha", "beta", "gamma"]
    assert main(["leaderboard", "show", "--out", str(tmp_path / "nothing")]) == 2
    assert "run `leaderboard build` first" in capsys.readouterr().err


# ---- the real path ---------------------------------------------------------------------------
@pytest.mark.model
def test_real_smollm2_on_three_mc_items(tmp_path):
    from experts.engines.weights import WeightsNotFound, resolve_weights

    try:
        resolve_weights("smollm2-135m-instruct")
    except WeightsNotFound as exc:
        pytest.skip(f"SmolLM2 weights not installed: {exc}")
    ts = TaskSet(name="real", tasks=[TaskInfo(name="net"), TaskInfo(name="db")], items=[
        MCItem(id="r1", task="net", question="Which protocol is used to log in to a remote Linux server securely?",
               options={"A": "FTP", "B": "SSH", "C": "SMTP", "D": "SNMP"}, answer=["B"]),
        MCItem(id="r2", task="net", question="Which port does HTTPS use by default?",
               options={"A": "80", "B": "21", "C": "443", "D": "25"}, answer=["C"]),
        MCItem(id="r3", task="db", question="Which SQL statements change data? (Choose two.)",
               options={"A": "SELECT", "B": "UPDATE", "C": "DELETE", "D": "GRANT"}, answer=["B", "C"], n_stated=2),
    ])
    spec = ModelSpec(name="smollm2", base="smollm2-135m-instruct", prompt_format="chat")
    run = build_leaderboard(ts, [spec], tmp_path, LeaderboardRunOptions(progress=False, plots=False))
    rows = pq.read_table(ResultStore(tmp_path).parts()[0]).to_pylist()
    assert len(rows) == 3 and {r["item_id"] for r in rows} == {"r1", "r2", "r3"}
    for r in rows:
        probs = json.loads(r["detail"])["probs"]
        assert set(probs) == {"A", "B", "C", "D"} and sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
        assert r["score"] in (0.0, 1.0) and r["latency_s"] > 0
    multi = next(r for r in rows if r["item_id"] == "r3")
    assert len(multi["prediction"].split(",")) == 2  # top-2 for "Choose two"
    assert run.task_map.routes == {"net": "smollm2", "db": "smollm2"} and run.task_map.fallback == "smollm2"


def test_evaluate_expert_directly():
    ts = _taskset(n=1)
    e = FakeEngine("alpha", {"net"}, _answers(ts))
    res = evaluate_expert(e, _spec("alpha"), ts.items, similarity_fn=_sim)
    assert {r.item_id: r.score for r in res} == {"net-0": 1.0, "db-0": 0.0, "app-0": 0.0, "db-multi": 0.0,
                                                 "app-free": 1.0}


def test_injected_classifier_gets_a_report_and_confusion_figure(tmp_path):
    from core.schemas import LabeledQuery

    ts = _taskset(n=1)
    ts = TaskSet(**{**ts.model_dump(), "holdout": [LabeledQuery(id="h1", text="vpn down", task="net"),
                                                   LabeledQuery(id="h2", text="slow query", task="db"),
                                                   LabeledQuery(id="h3", text="502 on deploy", task="app")]})
    guesses = {"vpn down": "net", "slow query": "net", "502 on deploy": "unknown"}
    run = build_leaderboard(ts, [_spec("alpha")], tmp_path, QUIET,
                            hooks=_hooks(Factory(ts, KNOWS), classify=lambda texts: [guesses[t] for t in texts]))
    assert run.classification["accuracy"] == pytest.approx(1 / 3)
    assert run.classification["columns"] == ["net", "db", "app", "unknown"]
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    assert json.loads((tmp_path / "classification.json").read_text())["n"] == 3
