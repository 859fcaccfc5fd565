"""Per-token cost of constraining decoding to the workflow grammar: xgrammar vs llguidance.

    .venv/bin/python scripts/bench_grammar.py            # both embedded tokenizers
    .venv/bin/pip install llguidance==1.9.1              # to compare with llguidance too

For each tokenizer and library: the time to compile the grammar, and the mean time to compute one
token mask while walking the grammar with random logits (300 tokens x 5 walks), next to the
variant with bounded step lengths ({0,199}) that the grammar avoids. The last line compares the
mask cost with one decode step of the model (measured here on the same prompt).
"""

from __future__ import annotations

import re
import statistics
import time

import torch

from core.workflow import GrammarSpec, gbnf
from experts.engines.weights import resolve_weights

WALKS, TOKENS = 5, 300


def bounded(grammar: str) -> str:
    return re.sub(r"(\]\*|\]\+)", lambda m: "]{0,199}" if m.group(1) == "]*" else "]{1,199}", grammar)


def walk_xgrammar(tokenizer, grammar: str, vocab: int) -> tuple[float, float]:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    t0 = time.perf_counter()
    compiled = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False).compile_grammar(grammar)
    compile_s = time.perf_counter() - t0
    times = []
    torch.manual_seed(0)
    for _ in range(WALKS):
        m = xgr.GrammarMatcher(compiled)
        mask = xgr.allocate_token_bitmask(1, info.vocab_size)
        for _ in range(TOKENS):
            t = time.perf_counter()
            m.fill_next_token_bitmask(mask)
            times.append(time.perf_counter() - t)
            logits = torch.randn(1, info.vocab_size)
            xgr.apply_token_bitmask_inplace(logits, mask)
            token = int(torch.multinomial(torch.softmax(logits * 0.5, -1), 1))
            if not m.accept_token(token) or m.is_terminated():
                break
    return compile_s, statistics.fmean(times) * 1e6


def walk_llguidance(tokenizer, grammar: str, vocab: int) -> tuple[float, float] | None:
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch as lt
    except ImportError:
        return None
    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tokenizer)
    g = llguidance.grammar_from("grammar", grammar)
    compile_s = time.perf_counter() - t0
    times = []
    torch.manual_seed(0)
    for _ in range(WALKS):
        m = llguidance.LLMatcher(lltok, g)
        mask = lt.allocate_token_bitmask(1, lltok.vocab_size)
        for _ in range(TOKENS):
            t = time.perf_counter()
            lt.fill_next_token_bitmask(m, mask, 0)
            times.append(time.perf_counter() - t)
            logits = torch.randn(1, lltok.vocab_size)
            lt.apply_token_bitmask_inplace(logits, mask)
            token = int(torch.multinomial(torch.softmax(logits * 0.5, -1), 1))
            if not m.consume_token(token) or m.is_stopped():
                break
    return compile_s, statistics.fmean(times) * 1e6


def decode_step_ms(weights) -> float:
    from experts.engines.base import SamplingParams
    from experts.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(weights, dtype="bfloat16", threads=1)
    prompt = engine.format_prompt("You are an SRE.", "Disk full on db-01. Write the troubleshooting steps.")
    engine.generate([prompt], SamplingParams(max_new_tokens=4))
    t = time.perf_counter()
    [gen] = engine.generate([prompt], SamplingParams(max_new_tokens=64))
    return (time.perf_counter() - t) * 1000 / max(1, gen.tokens[0])


def main() -> None:
    from transformers import AutoConfig, AutoTokenizer

    torch.set_num_threads(1)
    grammar = gbnf(GrammarSpec())
    step_ms = None
    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        weights = resolve_weights(name)
        tok = AutoTokenizer.from_pretrained(weights)
        vocab = AutoConfig.from_pretrained(weights).get_text_config().vocab_size
        for lib, walk in (("xgrammar", walk_xgrammar), ("llguidance", walk_llguidance)):
            for variant, text in (("unbounded steps", grammar), ("bounded steps {0,199}", bounded(grammar))):
                out = walk(tok, text, vocab)
                if out is None:
                    print(f"{name:22} {lib:10} not installed (pip install llguidance==1.9.1)")
                    break
                print(f"{name:22} {lib:10} {variant:22} compile {out[0]:5.2f} s   mask {out[1]:8.1f} us/token")
        if name == "smollm2-135m-instruct":
            step_ms = decode_step_ms(weights)
    print(f"SmolLM2 decode step (bfloat16, 1 thread, batch 1): {step_ms:.1f} ms/token")


if __name__ == "__main__":
    main()
