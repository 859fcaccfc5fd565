"""Engine on Hugging Face transformers: the CPU default, and a GPU fallback where vLLM is absent."""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from experts.engines.base import Generation, SamplingParams, TokenizedEngine, common_prefix_len, label_split
from experts.engines.constrained import ConstrainedSampler, GrammarCompilerCache

log = logging.getLogger(__name__)

# Prompts sharing at least this many leading tokens are run as one prefix plus short suffixes.
_MIN_SHARED_PREFIX = 16
# Sequences run as one group when their shared prefix is at least this share of the shorter one.
_GROUP_SHARE = 0.75
# A cached prefix is reused when at least this many leading tokens match.
_MIN_REUSE = 32
# KV caches of recent prefixes kept per engine.
_PREFIX_LRU = 8
# Upper bound on tokens per forward batch (rows x length) so memory stays flat on long inputs.
_MAX_BATCH_TOKENS = 16384


class TransformersEngine(TokenizedEngine):
    """A causal LM (optionally with a peft LoRA adapter) on CPU or one GPU."""

    def __init__(
        self,
        weights: str | Path,
        *,
        name: str = "model",
        adapter: str | Path | None = None,
        chat: bool = True,
        threads: int | None = 1,
        device: str | None = None,
        dtype: str = "float32",
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            # More threads than free cores collapses matmul throughput on a shared CPU.
            torch.set_num_threads(threads)
        self.name = name
        self.chat = chat
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(weights)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=getattr(torch, dtype))
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
            model = model.merge_and_unload()  # serving needs no adapter switching per replica
        self.model = model.to(self.device).eval()
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        # generate() is not re-entrant on one module; Serve may call from several threads.
        self._lock = threading.Lock()
        self._lru: OrderedDict[tuple, object] = OrderedDict()
        # Sliding-window caches (Gemma 3) cannot be cut back to a shorter prefix, and their layers do
        # not fit the static cache path of generate; full-attention models get both.
        self._full_attention = not getattr(self.model.config, "sliding_window", None)
        self._grammars = None

    # ---- generation ----------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        tok = self.tokenizer
        encoded = [self._encode_prompt(p) for p in prompts]
        width = max(len(e) for e in encoded)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=self.device)
        attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=self.device)
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            repetition_penalty=params.repetition_penalty,
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
        )
        sampler = self._sampler(len(prompts), params)
        if sampler is not None:
            # The sampler masks, picks greedy rows and warps itself; generate only draws from its scores.
            from transformers import LogitsProcessorList

            kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                          logits_processor=LogitsProcessorList([sampler]))
        elif params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        if self._full_attention:
            # A static cache makes generate torch.compile on GPUs: minutes per new shape, no gain here.
            kwargs["disable_compile"] = True
        with self._lock:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            if params.n > 1 and width > 1:
                out = self._generate_shared_prefill(input_ids, attention, params.n, kwargs)
            else:
                if self._full_attention:
                    kwargs["cache_implementation"] = "static"  # see _static_cache
                out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        new = out[:, width:]
        results: list[Generation] = []
        for i in range(len(prompts)):
            texts, counts, finished = [], [], []
            for j in range(params.n):
                row = new[i * params.n + j].tolist()
                ended = tok.eos_token_id in row
                row = [t for t in row if t != pad] if pad != tok.eos_token_id else _cut_eos(row, tok.eos_token_id)
                text = _cut_stop(tok.decode(row, skip_special_tokens=True), params.stop)
                texts.append(text)
                counts.append(len(row))
                # Under a grammar the stop token is only allowed once the text is complete.
                finished.append(ended or (not params.grammar and (len(row) < params.max_new_tokens
                                                                  or text != tok.decode(row))))
            results.append(Generation(texts=texts, tokens=counts, finished=finished))
        return results

    def _sampler(self, prompts: int, params: SamplingParams):
        """The grammar / greedy-row sampler a generate call needs, or None for plain decoding."""
        greedy = params.greedy_rows(prompts)
        mixed = params.temperature > 0 and bool(greedy)
        if params.grammar is None and not mixed and not params.frequency_penalty and not params.no_repeat_ngram:
            return None

        return ConstrainedSampler(self.grammars if params.grammar else None, params.grammar, prompts * params.n,
                                  greedy, params.temperature, params.top_p, params.line_chars,
                                  params.frequency_penalty, params.no_repeat_ngram)

    @property
    def grammars(self):
        """Compiled grammars for this tokenizer (built on first use)."""
        if self._grammars is None:
            self._grammars = GrammarCompilerCache(self.tokenizer, self.model.config.get_text_config().vocab_size)
        return self._grammars

    def _generate_shared_prefill(self, input_ids, attention, n: int, kwargs: dict):
        """n samples per prompt from one prefill. `num_return_sequences=n` copies every prompt n times
        before the forward pass, so best-of-N paid the prompt (retrieved context: ~1,000+ tokens) N
        times; here the prompt minus its last token is run once, its KV cache repeated n times, and
        generation continues from it (measured on SmolLM2, 1,259-token prompt, N=4: 19% less CPU).
        Rows come out grouped per prompt, as with num_return_sequences."""
        positions = (attention[:, :-1].cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens only
        try:
            prefill = self.model(input_ids=input_ids[:, :-1], attention_mask=attention[:, :-1],
                                 position_ids=positions, use_cache=True, logits_to_keep=1)
            cache = prefill.past_key_values
            static = self._static_cache(input_ids.shape[1] + kwargs["max_new_tokens"])
            if static is None:
                cache.batch_repeat_interleave(n)
            else:  # StaticLayer has no batch_repeat_interleave: repeat while copying the prefill in
                for i, layer in enumerate(cache.layers):
                    static.update(layer.keys.repeat_interleave(n, 0), layer.values.repeat_interleave(n, 0), i,
                                  {"cache_position": torch.arange(layer.keys.shape[2], device=self.device)})
                cache = static
        except Exception as exc:  # a model or cache type without this path: plain generate
            log.warning("shared prefill unavailable (%s); prefilling each of the %d samples", exc, n)
            return self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        return self.model.generate(input_ids=input_ids.repeat_interleave(n, 0),
                                   attention_mask=attention.repeat_interleave(n, 0), past_key_values=cache,
                                   **dict(kwargs, num_return_sequences=1))

    def _static_cache(self, length: int):
        """A preallocated KV cache for one generate call, or None (dynamic) for sliding-window models.
        The default DynamicCache appends with torch.cat, copying every layer's whole cache at every
        decoded token: on CPU that was 30-40% of a decode step with a ~1,000-token prompt (more at
        N=4); a static cache writes in place and gives the same tokens."""
        if not self._full_attention:
            return None
        from transformers import StaticCache

        return StaticCache(config=self.model.config, max_cache_len=length)

    # ---- scoring -------------------------------------------------------------------------
    def clear_prefix_cache(self) -> None:
        """Forget the KV caches of recent prefixes (benchmarks that must start cold)."""
        with self._lock:
            self._lru.clear()

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        seqs, starts = [], []
        for context, continuation in requests:
            full, start = self.split_continuation(context, continuation)
            seqs.append(full)
            starts.append(start)
        positions = [list(range(s - 1, len(q) - 1)) for q, s in zip(seqs, starts)]
        rows = self._logprobs_at(seqs, positions)
        return [
            float(sum(r[k, q[p + 1]].item() for k, p in enumerate(pos)))
            for r, q, pos in zip(rows, seqs, positions)
        ]

    def label_probs(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        if not labels:
            raise ValueError("labels must be non-empty")
        if not prompts:
            return []
        split = self._label_split(prompts[0], labels)
        if split is not None:
            # One forward pass per prompt gives the whole distribution (see Engine.label_probs).
            stem, ids = split
            seqs = [self._encode_prompt(p) + stem for p in prompts]
            rows = self._logprobs_at(seqs, [[len(s) - 1] for s in seqs])
            index = torch.tensor(ids)
            return [dict(zip(labels, torch.softmax(r[0, index].float(), dim=0).tolist())) for r in rows]
        flat = self.loglikelihood([(p, lab) for p in prompts for lab in labels])
        out = []
        for i in range(len(prompts)):
            scores = torch.tensor(flat[i * len(labels) : (i + 1) * len(labels)])
            out.append(dict(zip(labels, torch.softmax(scores, dim=0).tolist())))
        return out

    def _label_split(self, prompt: str, labels: list[str]) -> tuple[list[int], list[int]] | None:
        return label_split(self._encode_prompt(prompt), [self._encode_prompt(prompt + lab) for lab in labels])

    @torch.inference_mode()
    def _logprobs_at(self, seqs: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
        """Log-softmax rows [len(positions[i]), vocab] at the requested positions of each sequence.

        Sequences are grouped by long shared prefixes (the five Scorer questions about one
        workflow, the labels after one classifier prompt); each group's prefix runs once, its KV
        cache is kept in a small LRU so later calls that start the same way (the classifier's
        system prompt and task list, a ticket scored for several candidates) skip it, and only
        the short suffixes run batched on top of it.
        """
        with self._lock:
            return self._logprobs_locked(seqs, positions)

    def _logprobs_locked(self, seqs, positions):
        results: list[torch.Tensor | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: seqs[i])
        groups: list[list[int]] = []
        anchor: list[int] = []
        for i in order:
            # Group only on a prefix that is most of both sequences: five questions about one
            # workflow group together; different workflows after one shared context do not (their
            # common context is reused from the prefix cache instead of being re-run as a suffix).
            if groups:
                need = max(_MIN_SHARED_PREFIX, int(_GROUP_SHARE * min(len(anchor), len(seqs[i]))))
                if common_prefix_len(anchor, seqs[i]) >= need:
                    groups[-1].append(i)
                    continue
            groups.append([i])
            anchor = seqs[i]
        for g in groups:
            shared = min((common_prefix_len(seqs[g[0]], seqs[j]) for j in g[1:]), default=len(seqs[g[0]]))
            # Every requested position must fall in the suffix, which therefore is never empty.
            shared = min(shared, min(min(positions[j]) for j in g))
            self._run_group(g, seqs, positions, shared, results)
        return results  # type: ignore[return-value]

    def _prefix_cache(self, tokens: list[int]):
        """KV cache (batch 1) after `tokens`, reusing the longest prefix computed before."""
        best, best_len = None, 0
        for key in self._lru:
            n = common_prefix_len(key, tokens)
            if n > best_len:
                best, best_len = key, n
        cache = None
        if best is not None and (best_len == len(best) or (best_len >= _MIN_REUSE and self._full_attention)):
            self._lru.move_to_end(best)
            cache = copy.deepcopy(self._lru[best])
            if best_len < len(best):
                cache.crop(best_len - len(best))  # transformers 5: a negative count of tokens to drop
        else:
            best_len = 0
        if best_len < len(tokens):
            rest = torch.tensor([tokens[best_len:]], device=self.device)
            pos = torch.arange(best_len, len(tokens), device=self.device).unsqueeze(0)
            out = self.model(input_ids=rest, position_ids=pos, past_key_values=cache, use_cache=True,
                             logits_to_keep=1)
            cache = out.past_key_values
            self._lru[tuple(tokens)] = copy.deepcopy(cache)
            while len(self._lru) > _PREFIX_LRU:
                self._lru.popitem(last=False)
        return cache

    def _run_group(self, idx, seqs, positions, shared, results):
        pad = self.tokenizer.pad_token_id
        base = self._prefix_cache(seqs[idx[0]][:shared]) if shared > 0 else None
        lengths = [len(seqs[i]) - shared for i in idx]
        for chunk in _chunks(list(range(len(idx))), [n + shared for n in lengths]):
            members = [idx[k] for k in chunk]
            width = max(len(seqs[i]) - shared for i in members)
            suffix = [seqs[i][shared:] for i in members]
            # Right padding: causal attention keeps real tokens' logits independent of padding.
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in suffix], device=self.device)
            mask = torch.tensor([[1] * (shared + len(s)) + [0] * (width - len(s)) for s in suffix],
                                device=self.device)
            kwargs = {}
            if base is not None:
                cache = copy.deepcopy(base)
                if len(members) > 1:
                    cache.batch_repeat_interleave(len(members))
                pos = torch.arange(shared, shared + width, device=self.device).unsqueeze(0).expand(len(members), -1)
                kwargs = {"past_key_values": cache, "position_ids": pos, "use_cache": True}
            # Logits only from the first requested position on: the LM head over every prompt
            # position costs as much as the rest of a small model.
            first = min(min(positions[i]) for i in members) - shared
            logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=width - first, **kwargs).logits
            for row, i in enumerate(members):
                rel = [p - shared - first for p in positions[i]]
                results[i] = torch.log_softmax(logits[row, rel].float(), dim=-1).cpu()


def _chunks(items: list[int], lengths: list[int]):
    """Split items into batches whose padded size stays under the token budget."""
    batch: list[int] = []
    longest = 0
    for item, n in zip(items, lengths):
        if batch and max(longest, n) * (len(batch) + 1) > _MAX_BATCH_TOKENS:
            yield batch
            batch, longest = [], 0
        batch.append(item)
        longest = max(longest, n)
    if batch:
        yield batch


def _cut_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row


def _cut_stop(text: str, stops: tuple[str, ...]) -> str:
    cut = len(text)
    for s in stops:
        k = text.find(s)
        if k != -1:
            cut = min(cut, k)
    return text[:cut]
