"""Operator feedback in core/schemas.py: what an edit may carry, and the reasons bad feedback is refused."""

import pytest
from pydantic import ValidationError

from core.schemas import Feedback, Outcome, corrected_workflow
from core.workflow import StepKind, WorkflowError, linear_workflow


def edit(**kw):
    return corrected_workflow(Feedback.model_validate({"verdict": "edit", **kw}))


def test_plain_texts_are_a_straight_sequence_closed_by_a_resolved_step():
    wf = edit(steps=["Check disk usage with df -h", "Remove archived WAL segments"])
    assert [s.kind for s in wf.steps] == [StepKind.process, StepKind.process, StepKind.terminal]
    assert wf.steps[1].action.value == "change"


def test_line_form_texts_branch():
    wf = edit(steps=["Check disk usage", "Is the WAL volume full? yes 3, no 4", "[change] Remove archived WAL",
                     "[end] Escalate to the DBA"])
    assert wf.branching_decisions() == 1 and wf.steps[2].action.value == "change"


def test_typed_steps_and_mermaid():
    typed = [s.model_dump(mode="json") for s in linear_workflow(["Check the quota", "Raise the quota"]).steps]
    assert edit(steps=typed).action_steps() == ["Check the quota", "Raise the quota"]
    wf = edit(mermaid='flowchart TD\n A["Check"] --> B{"Full?"}\n B -->|Yes| C(["Clean"])\n B -->|No| D(["Escalate"])')
    assert wf.branching_decisions() == 1


@pytest.mark.parametrize("body, reason", [
    ({"verdict": "edit"}, "needs the corrected workflow"),
    ({"verdict": "edit", "steps": []}, "needs the corrected workflow"),
    ({"verdict": "edit", "mermaid": "flowchart TD\n A[Check --> "}, "malformed Mermaid"),
    ({"verdict": "edit", "mermaid": "graph LR\n A[a] --> B[b]\n B --> A"}, "no terminal"),
    ({"verdict": "edit", "steps": ["Check it", "Is it full? yes 3, no 1", "[change] Clean"]}, "no terminal"),
    ({"verdict": "edit", "steps": [{"id": "S1", "kind": "process", "text": "Check", "next": "S1"}]}, "no terminal"),
    ({"verdict": "edit", "steps": ["Check it"], "mermaid": "flowchart TD\n A([a])"}, "not both"),
    ({"verdict": "accept", "steps": ["Check it"]}, "only with verdict edit"),
    ({"verdict": "maybe"}, "'accept', 'reject' or 'edit'"),
    ({"verdict": "accept", "outcome": {"status": "not_resolved", "step": 2}}, "only with status resolved"),
    ({"verdict": "accept", "candidate": False}, "valid integer"),
])
def test_bad_feedback_is_refused_with_a_reason(body, reason):
    with pytest.raises(ValidationError) as err:
        Feedback.model_validate(body)
    assert reason in str(err.value)


def test_the_resolving_step_must_exist():
    wf = linear_workflow(["Check the quota", "Raise the quota"])
    assert Outcome(status="resolved", step=2).step_id(wf) == "S2"
    assert Outcome(status="resolved", step="S3").step_id(wf) == "S3"
    with pytest.raises(WorkflowError, match="has 3 steps"):
        Outcome(status="resolved", step=7).step_id(wf)
    with pytest.raises(WorkflowError, match="not a step"):
        Outcome(status="resolved", step="S9").step_id(wf)
