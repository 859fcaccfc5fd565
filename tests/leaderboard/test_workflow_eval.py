"""The workflow benchmark's figures from known answers (a scripted solver; STEPScore with MiniLM)."""

import pytest

from core.workflow import linear_workflow, parse_lines
from leaderboard.workflow_cases import WorkflowCase
from leaderboard.workflow_eval import CaseResult, cut_steps, evaluate, table_rows

pytestmark = pytest.mark.model  # STEPScore embeds with the real MiniLM

STEPS = ["Check disk usage with df -h", "Remove archived WAL segments", "Escalate to the storage team"]
CASES = [WorkflowCase(id=f"c{i}", query="WAL volume full", reference_steps=STEPS, source=f"c{i}.md")
         for i in range(2)]


def test_cut_steps_counts_ellipsis_endings():
    assert cut_steps(linear_workflow(["Check the disk usage with df -h and then …", "Restart it..."])) == 2
    assert cut_steps(linear_workflow(STEPS)) == 0


def test_summary_and_table_from_scripted_answers():
    branching = parse_lines("1. Check disk usage with df -h\n2. Is the WAL volume full? yes 3, no 4\n"
                            "3. [change] Remove archived WAL segments\n4. [end] Escalate to the storage team")
    answers = {"c0": branching, "c1": linear_workflow(["Check disk usage with df …", *STEPS[1:]])}

    def solve(case):
        wf = answers[case.id]
        return CaseResult(case.id, wf.action_steps(), True, 1.0, plan_s=0.5, expert="e", sampled=4, dropped=0,
                          branching=wf.branching_decisions() > 0, cut_steps=cut_steps(wf), knowledge="matched")

    s = evaluate(CASES, solve, "service", 4, progress=False)
    assert s.cases == 2 and s.branching_rate == 50.0 and s.cut_steps == 1 and s.unparseable_rate == 0.0
    assert s.f1 > 80 and s.no_knowledge_with_runbook == 0 and s.experts == {"e": 2}
    head, rule, row = table_rows([s])
    assert head.count("|") == row.count("|") == rule.count("|") and "steps cut with …" in head
