"""The one interface every model role uses, whatever runs the weights (transformers, vLLM)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. `n` samples per prompt; temperature 0 means greedy (then n must be 1).

    `grammar` (GBNF text, `core.workflow.grammar`) constrains every continuation to the grammar's
    language: transformers through xgrammar, vLLM through its structured outputs. With
    `greedy_first` the first of the n continuations is the greedy decode and the rest are sampled,
    in the same batch. `line_chars` is a soft cap on characters per output line (transformers only;
    past it the decoder prefers tokens that end the line). `frequency_penalty` is subtracted from a
    token's logit once per time the continuation already used it (its own output, not the prompt).
    `no_repeat_ngram` (transformers only; soft under a grammar) refuses a token that would repeat an
    n-token run of the continuation's own output.
    """

    n: int = 1
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    grammar: str | None = None
    greedy_first: bool = False
    line_chars: int | None = None
    frequency_penalty: float = 0.0
    no_repeat_ngram: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.temperature <= 0 and self.n > 1:
            raise ValueError("n > 1 needs temperature > 0 (greedy samples would be identical)")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.grammar is not None and self.stop:
            raise ValueError("a grammar decides where the text ends: stop strings do not combine with it")

    def greedy_rows(self, prompts: int) -> set[int]:
        """Rows (prompt-major, n per prompt) decoded greedily."""
        if self.temperature <= 0:
            return set(range(prompts * self.n))
        return {i * self.n for i in range(prompts)} if self.greedy_first else set()


@dataclass
class Generation:
    """One prompt's samples, with the tokens each took and whether it ended before the token budget.

    `finished[i]` is False when continuation i was cut off by `max_new_tokens`; with a grammar, a
    finished text is always a complete text of the grammar.
    """

    texts: list[str]
    tokens: list[int] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)


class Engine(ABC):
    """Batched text operations over one loaded model (optionally with a LoRA adapter)."""

    name: str

    @abstractmethod
    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """For each prompt, `params.n` continuations (stop strings removed)."""

    @abstractmethod
    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        """Sum of log-probabilities of each continuation given its context."""

    @abstractmethod
    def label_probs(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        """For each prompt, a distribution over `labels` as the next text (sums to 1).

        The labels' distinguishing tokens are scored after their shared stem (`label_split`):
        next-token probabilities renormalised over the set, exact when labels differ in one
        token (" 1".." 5"), the first-token distribution for longer labels whose first tokens
        differ (task names). Labels that share their first distinguishing token fall back to
        full continuation likelihoods.
        """

    @abstractmethod
    def format_prompt(self, system: str, user: str, assistant_prefix: str = "") -> str:
        """Render a system+user message in the model's own prompt format (chat template or plain)."""

    def count_tokens(self, text: str) -> int:
        raise NotImplementedError

    def count_prompt_tokens(self, prompt: str) -> int:
        """Tokens `generate` feeds the model for a rendered prompt (with any start token it adds)."""
        return self.count_tokens(prompt)

    def close(self) -> None:  # noqa: B027  (optional hook: most engines hold nothing to release)
        """Release the model (engines that own processes or devices override this)."""


class TokenizedEngine(Engine):
    """Prompt formatting and tokenising shared by the engines that hold a Hugging Face tokenizer.

    Subclasses set `tokenizer`, `chat` (use the chat template) and `has_chat_template`; both
    engines then tokenise prompts by the same rule, so their scores are comparable.
    """

    tokenizer = None
    chat: bool = True
    has_chat_template: bool = False

    def format_prompt(self, system: str, user: str, assistant_prefix: str = "") -> str:
        if self.chat and self.has_chat_template:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text + assistant_prefix
        # Base models: plain completion framing.
        head = f"{system}\n\n" if system else ""
        return f"{head}{user}\n{assistant_prefix}"

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def count_prompt_tokens(self, prompt: str) -> int:
        return len(self._encode_prompt(prompt))

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def split_continuation(self, context: str, continuation: str) -> tuple[list[int], int]:
        """Token ids of context+continuation and the index of the first continuation token.

        Whitespace belongs to the continuation (BPE vocabularies attach it to the next word), and
        the split is the longest common prefix of the context's and the whole text's token ids.
        """
        if not continuation:
            raise ValueError("continuation must be non-empty")
        stripped = context.rstrip(" ")
        continuation = context[len(stripped):] + continuation
        ctx = self._encode_prompt(stripped)
        full = self._encode_prompt(stripped + continuation)
        split = common_prefix_len(ctx, full)
        if split == len(full):
            split = len(full) - 1
        return full, max(split, 1)

    def _encode_prompt(self, text: str) -> list[int]:
        ids = self._encode(text)
        bos = self.tokenizer.bos_token_id
        # Chat templates already carry their own start tokens; base models expect BOS.
        if bos is not None and not (self.chat and self.has_chat_template) and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def label_split(prompt_ids: list[int], with_labels: list[list[int]]) -> tuple[list[int], list[int]] | None:
    """(shared stem, first distinguishing token per label) for `label_probs`, or None.

    `with_labels[i]` is the tokenisation of prompt + labels[i]. None when a label changes the
    prompt's own tokens, is empty, or two labels share their distinguishing token.
    """
    tails = []
    for full in with_labels:
        if full[: len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
            return None
        tails.append(full[len(prompt_ids):])
    stem_len = min(len(t) for t in tails) - 1
    while stem_len > 0 and any(t[:stem_len] != tails[0][:stem_len] for t in tails):
        stem_len -= 1
    ids = [t[stem_len] for t in tails]
    return (tails[0][:stem_len], ids) if len(set(ids)) == len(ids) else None
