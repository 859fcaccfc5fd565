"""Schemathesis hooks for fuzzing the FlowRouter API (loaded via SCHEMATHESIS_HOOKS by test_api_fuzz.py).

Solving a ticket costs seconds to minutes of model compute on a small CPU, so a fuzzer that sends
hundreds of valid tickets would run for hours. These hooks keep every generated case exactly as valid
or invalid as it was generated, but make the valid ones stop before any model runs:

* ticket bodies get a valid `id` that is already taken (the seed ticket): 409 after validation,
  size and expert checks, before anything is recorded or computed;
* chat completions get a valid but unknown `model`: 404 after validation;
* Alertmanager notifications get their valid alerts marked `resolved`: a resolved alert only marks a
  ticket it already has (none here), so nothing is queued;
* about half of the ticket-id path parameters name the seed ticket, so GET /v1/tickets/{id} and the
  feedback endpoint are fuzzed on a real ticket, not only on 404s.
Validation of every field, the error paths and the response schemas are still fuzzed in full.
"""

import os
import random
import re

import schemathesis

SEED_ID = os.environ.get("FLOWROUTER_FUZZ_TICKET_ID", "fuzz-seed")
ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


def _pin_id(ticket) -> None:
    if not isinstance(ticket, dict):
        return
    current = ticket.get("id")
    if current is None or (isinstance(current, str) and ID_RE.match(current)):
        ticket["id"] = SEED_ID


@schemathesis.hook
def before_call(context, case, kwargs):
    path, method = case.operation.path, case.method.upper()
    if path.startswith("/v1/tickets/{ticket_id}") and isinstance(case.path_parameters, dict):
        if random.Random(repr(case.path_parameters)).random() < 0.5:
            case.path_parameters["ticket_id"] = SEED_ID
    if method != "POST":
        return
    if path == "/v1/tickets":
        _pin_id(case.body)
    elif path == "/v1/tickets/batch" and isinstance(case.body, dict) and isinstance(case.body.get("tickets"), list):
        for t in case.body["tickets"]:
            _pin_id(t)
    elif path == "/v1/alerts/alertmanager" and isinstance(case.body, dict) and isinstance(case.body.get("alerts"), list):
        for alert in case.body["alerts"]:
            if isinstance(alert, dict) and alert.get("status") == "firing":
                alert["status"] = "resolved"
    elif path == "/v1/chat/completions" and isinstance(case.body, dict):
        model = case.body.get("model")
        if "model" not in case.body or (isinstance(model, str) and len(model) <= 100):
            case.body["model"] = "fuzz-no-such-expert"
