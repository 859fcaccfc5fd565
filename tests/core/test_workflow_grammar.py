import random

import pytest

from core.workflow import GrammarSpec, StepKind, WorkflowError, close_truncated, gbnf, parse_lines
from core.workflow.grammar import START, _live_states, _moves


def _random_text(spec: GrammarSpec, rng: random.Random) -> str:
    """A random walk through the grammar's automaton, written out as the line form."""
    live = _live_states(spec)
    state, lines = START, []
    while True:
        moves = [m for m in _moves(spec, state) if m[2] is None or m[2] in live]
        kw, detail, nxt = rng.choice(moves)
        tag = {"change": "[change] ", "end": "[end] "}.get(kw, "")
        if kw == "decide":
            lines.append(f"{state[0]}. Is check {state[0]} positive? yes {detail[0]}, no {detail[1]}")
        else:
            lines.append(f"{state[0]}. {tag}step {state[0]} text")
        if nxt is None:
            return "\n".join(lines)
        state = nxt


@pytest.mark.parametrize("spec", [GrammarSpec(), GrammarSpec(max_steps=6),
                                  GrammarSpec(max_steps=12, require_decision=False)])
def test_every_text_of_the_grammar_is_a_valid_workflow(spec):
    rng = random.Random(0)
    for _ in range(300):
        text = _random_text(spec, rng)
        wf = parse_lines(text, {1: "n-a"})
        assert wf.steps[0].action.value == "observe"
        assert not wf.changes_before_observing()
        assert len(wf.steps) <= spec.max_steps
        if spec.require_decision:
            assert any(s.kind == StepKind.decision for s in wf.steps)


def test_grammar_text_is_gbnf_with_every_live_state():
    spec = GrammarSpec(max_steps=8)
    text = gbnf(spec)
    assert text.startswith("root ::= s1t0d0\n")
    assert '"2. [change] " text "\\n"' in text
    assert text.count("::=") == len(_live_states(spec)) + 3  # root, text, question


def test_close_truncated_ends_at_the_next_line_and_moves_pending_targets():
    spec = GrammarSpec(max_steps=10)
    text = ("1. Check disk usage with df -h\n2. Is the WAL volume full? yes 3, no 6\n"
            "3. [change] Remove archived WAL segments\n4. Confirm post")
    wf = close_truncated(text, spec)
    assert [s.kind for s in wf.steps] == [StepKind.process, StepKind.decision, StepKind.process,
                                          StepKind.terminal, StepKind.terminal]
    assert (wf.steps[1].yes, wf.steps[1].no) == ("S3", "S5")  # the far branch: its own terminal
    assert wf.step("S3").next == "S4" and "Escalate" in wf.step("S5").text
    with pytest.raises(WorkflowError):
        close_truncated("1. Check the disk usa", spec)


def test_a_question_cut_off_before_its_far_branch_keeps_two_branches():
    text = ("1. Check disk usage with df -h\n2. Find the largest directories\n"
            "3. Is the WAL volume full? yes 4, no 8\n4. Check the archiver")
    wf = close_truncated(text, GrammarSpec(max_steps=10)).validate_graph()
    q = wf.steps[2]
    assert (q.yes, q.no) == ("S4", "S5") and wf.branching_decisions() == 1
    assert [wf.step(t).kind for t in ("S4", "S5")] == [StepKind.terminal, StepKind.terminal]


def test_a_short_jump_past_the_cut_goes_to_the_escalation():
    # Step 3 jumps two lines ahead (to 5); the budget ends inside step 4.
    text = ("1. Check disk usage with df -h\n2. Find the largest directories\n"
            "3. Are the logs the largest? yes 5, no 4\n4. Check the database volume for old WAL segme")
    wf = close_truncated(text, GrammarSpec(max_steps=10)).validate_graph()
    q = wf.steps[2]
    assert (q.yes, q.no) == ("S5", "S4") and wf.branching_decisions() == 1
    assert "Escalate" in wf.step("S5").text and wf.step("S4").kind == StepKind.terminal


def test_close_truncated_without_a_decision_ends_with_the_resolved_check():
    text = "1. Check disk usage with df -h\n2. Find the largest directories\n3. Find where the spa"
    wf = close_truncated(text, GrammarSpec(max_steps=10)).validate_graph()
    assert wf.branching_decisions() == 1
    check = wf.steps[2]
    assert check.kind == StepKind.decision and check.text.startswith("Is the problem resolved")
    assert [wf.step(check.yes).kind, wf.step(check.no).kind] == [StepKind.terminal, StepKind.terminal]
    assert "Escalate" in wf.step(check.no).text
    # Without require_decision the budget closes with one terminal, as before.
    plain = close_truncated(text, GrammarSpec(max_steps=10, require_decision=False))
    assert [s.kind for s in plain.steps][-1] == StepKind.terminal and plain.branching_decisions() == 0


def test_grammar_refuses_impossible_specs():
    with pytest.raises(ValueError):
        GrammarSpec(max_steps=4, require_decision=True)
