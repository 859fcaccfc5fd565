"""The grammar that makes every model-written workflow valid, and the automaton behind it.

Constrained decoding (xgrammar in the transformers engine, vLLM's structured outputs) only lets a
model write texts of this grammar, a subset of the line form (`core.workflow.lines`) in which
every text parses into a valid workflow:

- step 1 observes (an `observe` step or a question): nothing is changed before anything is looked at;
- a question's two targets are the next line and a later one: two lines ahead ("if X, do Y"), or a
  far target that every question shares while it is pending;
- a terminal may only stand right before a line some question jumps to (so no line is unreachable);
- the workflow ends with a terminal once no target is pending, within `max_steps` lines, and
  (with `require_decision`) after at least one question.

The automaton's state before writing line i is (i, pending far jump target, whether line i+1 is
a short-jump target, whether a question was written). Its states are finite, so the grammar is
regular; it is written out as GBNF (the EBNF dialect that xgrammar, llguidance and llama.cpp
read), keeping only states from which the workflow can still be completed. `close_truncated`
uses the same automaton to finish a text cut off by the token budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from core.workflow.lines import CHANGE_TAG, END_TAG, parse_lines
from core.workflow.schema import Workflow, WorkflowError

CLOSING_TEXT = "Verify the outcome; escalate to the owning team with the findings if the problem remains"
CLOSING_QUESTION = "Is the problem resolved"
RESOLVED_TEXT = "Close the incident with the findings"
ESCALATE_TEXT = "Escalate to the owning team with the findings"


@dataclass(frozen=True)
class GrammarSpec:
    """What a grammar allows. Hashable: compiled grammars are cached per spec."""

    max_steps: int = 10
    require_decision: bool = True
    min_actions: int = 2  # steps before the first terminal

    def __post_init__(self):
        if not 3 <= self.max_steps <= 30:
            raise ValueError("max_steps must be between 3 and 30")
        if self.require_decision and self.max_steps < self.min_actions + 3:
            raise ValueError("max_steps leaves no room for a decision and its two branches")


# (line about to be written, pending far jump target or 0, whether the next line is a short-jump
# target, whether a question was written)
State = tuple[int, int, bool, bool]
START: State = (1, 0, False, False)


def _moves(spec: GrammarSpec, state: State) -> list[tuple[str, tuple, State | None]]:
    """(keyword, details, next state or None when the workflow ends) for every line allowed in `state`.

    A question jumps either two lines ahead (skipping the one step that handles its yes/no case,
    "If X, do Y") or to the far target shared by every question while it is pending (the
    escalation or the other branch further down). A terminal may only stand where the next line
    is a jump target, or at the end.
    """
    i, t, short, d = state
    m = spec.max_steps
    far = 0 if t == i else t
    moves: list[tuple[str, tuple, State | None]] = []
    if i + 1 <= m:
        moves.append(("observe", (), (i + 1, far, False, d)))
        if i > 1:
            moves.append(("change", (), (i + 1, far, False, d)))
    if i + 2 <= m:
        jumps = {i + 2} | ({far} if far > i + 2 else set(range(i + 3, m + 1)) if not far else set())
        for j in sorted(jumps):
            nxt = (i + 1, far or (j if j > i + 2 else 0), j == i + 2, True)
            moves.append(("decide", (i + 1, j), nxt))
            moves.append(("decide", (j, i + 1), nxt))
    if i > spec.min_actions:
        if short or far == i + 1:
            moves.append(("end", (), (i + 1, far, False, d)))
        elif not far and (d or not spec.require_decision):
            moves.append(("end", (), None))
    return moves


@lru_cache(maxsize=64)
def _live_states(spec: GrammarSpec) -> frozenset:
    """States from which a complete workflow can still be written."""
    states: set[State] = set()
    todo: list[State] = [START]
    while todo:
        s = todo.pop()
        if s in states:
            continue
        states.add(s)
        todo.extend(nxt for _, _, nxt in _moves(spec, s) if nxt is not None)
    live = {s for s in states if any(nxt is None for _, _, nxt in _moves(spec, s))}
    changed = True
    while changed:
        changed = False
        for s in states - live:
            if any(nxt in live for _, _, nxt in _moves(spec, s) if nxt is not None):
                live.add(s)
                changed = True
    return frozenset(live)


def _name(state: State) -> str:
    i, t, short, d = state
    return f"s{i}t{t}{'j' if short else ''}d{int(d)}"


@lru_cache(maxsize=64)
def gbnf(spec: GrammarSpec) -> str:
    """The grammar as GBNF text (root rule `root`)."""
    live = _live_states(spec)
    start = START
    if start not in live:
        raise ValueError(f"no workflow satisfies {spec}")
    rules = [f"root ::= {_name(start)}"]
    for state in sorted(live):
        alts = []
        for kw, detail, nxt in _moves(spec, state):
            if nxt is not None and nxt not in live:
                continue
            head = f'"{state[0]}. '
            if kw == "decide":
                body = f'{head}" question "? yes {detail[0]}, no {detail[1]}"'
            elif kw == "end":
                body = f'{head}{END_TAG}" text'
            elif kw == "change":
                body = f'{head}{CHANGE_TAG}" text'
            else:
                body = f'{head}" text'
            alts.append(body + (f' "\\n" {_name(nxt)}' if nxt is not None else ""))
        rules.append(f"{_name(state)} ::= " + " | ".join(alts))
    # Unbounded repetitions: a bounded one ({0,199}) made xgrammar's compile ~7x and its per-token mask
    # ~270x slower here, and so did a rule forbidding "3. " inside a text (47 ms per token). Both are
    # soft rules of the decoder instead (SamplingParams.line_chars; experts.engines.constrained).
    chars = r"[^\n?\[\]]"
    first = r"[^\n?\[\] ]"
    rules += [f"text ::= {first} {chars}*", f"question ::= {first} {chars}+"]
    return "\n".join(rules) + "\n"


# ---- following the automaton over written text -------------------------------------------------
_HEAD = re.compile(r"^(\d{1,2})\. (\[change\] |\[end\] )?")
_TARGETS = re.compile(r"\? yes (\d{1,2}), no (\d{1,2})$")


def _advance(spec: GrammarSpec, state: State, line: str) -> State | None:
    """The state after `line`, None when it ends the workflow; WorkflowError when the grammar forbids it."""
    m = _HEAD.match(line)
    if not m or int(m[1]) != state[0]:
        raise WorkflowError(f"line does not continue step {state[0]}: {line[:40]!r}")
    tm = _TARGETS.search(line)
    kw = {CHANGE_TAG: "change", END_TAG: "end"}.get(m[2] or "", "decide" if tm else "observe")
    detail = (int(tm[1]), int(tm[2])) if tm else ()
    for move_kw, move_detail, nxt in _moves(spec, state):
        if move_kw == kw and (kw != "decide" or move_detail == detail):
            return nxt
    raise WorkflowError(f"the grammar does not allow {line[:40]!r} at step {state[0]}")


def close_truncated(text: str, spec: GrammarSpec, sources: dict[int, str] | None = None) -> Workflow:
    """A valid workflow from a grammar text the token budget cut off.

    The unfinished last line is dropped and the workflow ends at the next line with a terminal
    that says what is left to do. A question's jump past it (a target never written: the far
    branch, or the line after next) goes to a second terminal after it, the escalation, so every
    question keeps two distinct branches. When the
    grammar asks for a decision and none was written yet, the closing step is the check every
    troubleshooting run ends with instead: is the problem resolved (close), or not (escalate).
    Raises WorkflowError when not even one line was finished.
    """
    lines = text.split("\n")
    done = lines[:-1]  # the last line is unfinished (the grammar ends only at EOS)
    if not done:
        raise WorkflowError("the token budget ran out inside the first step")
    state: State | None = START
    for line in done:
        state = _advance(spec, state, line)
        if state is None:
            raise WorkflowError("text already ends the workflow: parse it instead")
    last = state[0]
    if spec.require_decision and not state[3]:
        closing = [f"{last}. {CLOSING_QUESTION}? yes {last + 1}, no {last + 2}",
                   f"{last + 1}. {END_TAG}{RESOLVED_TEXT}", f"{last + 2}. {END_TAG}{ESCALATE_TEXT}"]
        return parse_lines("\n".join(done + closing), sources)
    closing = [f"{last}. {END_TAG}{CLOSING_TEXT}"]
    _, far, short, _ = state
    if far > last or short:  # a question jumps past the last line written
        done = [_retarget(line, last) for line in done]
        closing.append(f"{last + 1}. {END_TAG}{ESCALATE_TEXT}")
    return parse_lines("\n".join(done + closing), sources)


def _retarget(line: str, last: int) -> str:
    """A question's jumps past `last` (lines never written) moved to the escalation terminal after it."""
    m = _TARGETS.search(line)
    if not m:
        return line
    yes, no = (last + 1 if int(g) > last else int(g) for g in (m[1], m[2]))
    return line[: m.start()] + f"? yes {yes}, no {no}"


def read_workflow(text: str, finished: bool, spec: GrammarSpec, sources: dict[int, str] | None = None) -> Workflow:
    """The workflow a model wrote under `spec`'s grammar: parsed when it finished, closed when the budget cut it."""
    return parse_lines(text, sources) if finished else close_truncated(text, spec, sources)


def grammar_lines(text: str, spec: GrammarSpec) -> int:
    """How many leading lines of `text` the grammar accepts (partial credit for unconstrained text)."""
    state: State | None = START
    n = 0
    for line in text.split("\n"):
        if state is None:
            break
        try:
            state = _advance(spec, state, line)
        except WorkflowError:
            break
        n += 1
    return n
