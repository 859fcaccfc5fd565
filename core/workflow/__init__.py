"""Workflows: the schema, its line form and grammar (what models write), and Mermaid.

    schema   typed steps (process / decision / terminal, observe / change) with their transitions
    lines    the compact line form models write and knowledge is shown in
    grammar  the GBNF grammar constrained decoding enforces, and its automaton
    mermaid  rendering (always valid, injection-safe) and parsing of flowcharts
    steps    plain step lists (free text, runbook lists) as straight workflows
    actions  which verbs observe and which change
"""

from core.workflow.grammar import GrammarSpec, close_truncated, gbnf, read_workflow
from core.workflow.lines import clean_step_text, line_text, parse_lines, render_lines
from core.workflow.mermaid import MermaidError, escape_label, parse_mermaid, to_mermaid
from core.workflow.schema import Action, Edge, Step, StepKind, Workflow, WorkflowError
from core.workflow.steps import linear_workflow, parse_step_list

__all__ = [
    "Action", "Edge", "GrammarSpec", "MermaidError", "Step", "StepKind", "Workflow",
    "WorkflowError", "clean_step_text", "close_truncated", "escape_label", "gbnf", "line_text", "linear_workflow",
    "parse_lines", "parse_mermaid", "parse_step_list", "read_workflow", "render_lines", "to_mermaid",
]
