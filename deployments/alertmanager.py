"""Alertmanager's webhook receiver: a firing alert becomes a ticket, a resolved alert closes its ticket.

    POST /v1/alerts/alertmanager[?candidates=N&on_resolved=cancel|annotate]      (role `ticket`)

Alertmanager posts one notification per alert group (webhook payload version 4) with the API key as a
bearer token (`http_config.authorization.credentials`). What the receiver does with it:

- One ticket per firing alert, on the async path (FloodGate.submit_async: durable in the ticket store,
  computed by the worker). Its title and description come from the alert name, the `summary` and
  `description` annotations and the labels; `labels` carries them as `key=value` (those that fit) and
  `alert` carries all of them, typed (core.schemas.AlertContext).
- Idempotent: the ticket id is `am-<fingerprint>-<startsAt in Unix seconds>` (`ticket_id`), so the
  re-sends Alertmanager makes (every repeat_interval, on every change of the group, from each member of
  an HA pair) find their ticket (`duplicate`) instead of adding one. A new firing of the same alert has a
  new startsAt, hence a new ticket. Seconds, because Alertmanager's own API shows startsAt to the
  millisecond while the webhook sends nanoseconds.
- One incident per group and alert name (`incident_id`: a hash of groupKey and alertname). It is the
  ticket's `alert.incident`, which the flood gate shares computations by (deployments/coalesce.py): the
  alerts of one incident are computed once, and every ticket gets that result (`shared`: coalesced or
  cache, `shared_from`: the ticket that was computed). The answer lists each alert's incident.
- A resolved alert marks its ticket (the store's `resolved` annotation, `alert.resolved_at` in
  GET /v1/tickets/{id}). A ticket still waiting in the queue is cancelled (status `cancelled`, the reason
  in `error`) with `on_resolved=cancel`, the default: an alert storm that clears by itself should not
  leave the queue computing workflows for it. Not when the ticket has a result webhook (its receiver
  waits for the result), and not with `on_resolved=annotate`: those compute as usual. A running or
  finished ticket keeps its status and result.
- Retrieval keys: the alert name and the file name of the `runbook_url` annotation reach the Planner's
  retrieval (PlanRequest.keys), which ranks the runbook named exactly like one first.
- Severity: a critical alert (`Ticket.is_critical`: `severity` critical, page, emergency...) is not shed
  for the async backlog and is computed first, so under a storm the lower severities wait or are refused.

Answer: 200 with an entry per alert (ticket id, outcome, incident). When the backlog refused firing
alerts, 503 with Retry-After and the same body: Alertmanager retries on 5xx (a 429 it would drop), and
its retry finds the accepted alerts as duplicates. An invalid payload gets 422 with the reasons.

No `from __future__ import annotations`: FastAPI reads these models from the ingress's signatures.
"""


import hashlib
import logging
import re
import time
from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from core.schemas import ALERT_MAX_ENTRIES, ALERT_MAX_NAME_CHARS, ALERT_MAX_VALUE_CHARS, AlertContext, Ticket
from deployments.admission import Overloaded
from deployments.flood import AlreadySubmitted, FloodGate
from deployments.ticket_store import CANCELLED, TicketStore

log = logging.getLogger("flowrouter.alertmanager")

SOURCE = "alertmanager"
RUNBOOK_SUFFIXES = (".md", ".markdown", ".html", ".htm", ".adoc", ".rst", ".txt")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
MAX_LABEL_TAG_CHARS, MAX_LABEL_TAGS = 64, 32  # Ticket.labels' own limits


def _rfc3339(value: Any) -> Any:
    """Only what Alertmanager sends (Go's RFC 3339 with a zone), not pydantic's looser date forms."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with a time zone, e.g. 2024-05-01T10:00:00.123Z")
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise ValueError("date-time out of range once converted to UTC") from None


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339), AfterValidator(_utc)]


class AlertmanagerAlert(BaseModel):
    """One alert of a notification, as Alertmanager sends it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(description="Identifying labels (alertname, severity, instance...).")
    annotations: dict[str, str] | None = Field(default=None, description="summary, description, runbook_url...")
    starts_at: Timestamp = Field(alias="startsAt")
    ends_at: Timestamp | None = Field(default=None, alias="endsAt",
                                      description="When it resolved (0001-01-01T00:00:00Z while firing).")
    generator_url: str | None = Field(default=None, alias="generatorURL")
    fingerprint: str = Field(pattern=r"^[0-9A-Za-z]{1,64}$", description="Alertmanager's hash of the labels.")

    @property
    def name(self) -> str:
        return self.labels.get("alertname") or "alert"

    @property
    def notes(self) -> dict[str, str]:
        return self.annotations or {}


class AlertmanagerPayload(BaseModel):
    """Alertmanager's webhook notification (payload version 4)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    version: Literal["4"] = Field(description="Payload version; 4 since Alertmanager 0.7.")
    receiver: str
    status: Literal["firing", "resolved"]
    alerts: list[AlertmanagerAlert]
    group_labels: dict[str, str] | None = Field(default=None, alias="groupLabels")
    common_labels: dict[str, str] | None = Field(default=None, alias="commonLabels")
    common_annotations: dict[str, str] | None = Field(default=None, alias="commonAnnotations")
    external_url: str | None = Field(default=None, alias="externalURL")
    group_key: str = Field(alias="groupKey", description="The group's identity (route and group labels).")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts", strict=True,
                                  description="Alerts left out of the notification by max_alerts.")


Outcome = Literal["queued", "duplicate", "resolved", "cancelled", "unknown", "refused"]


class AlertOutcome(BaseModel):
    ticket_id: str = Field(description="The alert's ticket (`ticket_id`: fingerprint and startsAt).")
    fingerprint: str
    alertname: str
    alert_status: Literal["firing", "resolved"]
    incident: str = Field(description="The incident the alert belongs to: its group and alert name.")
    outcome: Outcome = Field(description="queued: a new ticket; duplicate: a re-send of a known one; resolved: "
                                         "its ticket marked resolved; cancelled: marked resolved and taken out of "
                                         "the queue; unknown: a resolved alert without a ticket; refused: the "
                                         "backlog is full (503, Alertmanager retries).")
    ticket_status: str | None = Field(default=None, description="The ticket's status now (null: no ticket).")
    status_url: str | None = None
    detail: str | None = None


class AlertmanagerReceipt(BaseModel):
    receiver: str
    group_key: str
    status: Literal["firing", "resolved"]
    alerts: list[AlertOutcome]
    incidents: dict[str, list[str]] = Field(description="Incident -> its tickets in this notification.")
    counts: dict[str, int] = Field(description="Alerts per outcome.")
    detail: str | None = Field(default=None, description="Why some alerts were refused (with status 503).")


# ---- what a ticket is made of ------------------------------------------------------------------------
def ticket_id(fingerprint: str, starts_at: datetime) -> str:
    """The ticket of one firing of one alert: the same for every re-send of it."""
    return f"am-{fingerprint}-{int(starts_at.timestamp() // 1)}"


def incident_id(group_key: str, alertname: str) -> str:
    """The incident of one alert name within one alert group."""
    digest = hashlib.sha256(f"{group_key}\x00{alertname}".encode()).hexdigest()[:16]
    return f"am-incident-{digest}"


def runbook_names(url: str) -> list[str]:
    """The names a runbook URL gives its runbook: the last path segment without its extension, and the
    fragment (`.../runbooks.md#KubePodCrashLooping`); prometheus-operator's are lower-cased alert names."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return []
    names = []
    segment = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    for suffix in RUNBOOK_SUFFIXES:
        if segment.lower().endswith(suffix):
            segment = segment[: -len(suffix)]
            break
    if segment:
        names.append(segment)
    if parts.fragment:
        names.append(unquote(parts.fragment))
    return names


def retrieval_keys(alert: AlertmanagerAlert) -> list[str]:
    keys = [alert.name, *runbook_names(alert.notes.get("runbook_url", ""))]
    out: list[str] = []
    for k in keys:
        k = k.strip()[:ALERT_MAX_NAME_CHARS]
        if k and k not in out:
            out.append(k)
    return out[:8]


def _bounded(entries: dict[str, str], first: tuple[str, ...] = ()) -> dict[str, str]:
    """Entries within AlertContext's limits (names that are too long are dropped, values cut)."""
    order = [k for k in first if k in entries] + sorted(k for k in entries if k not in first)
    kept = [k for k in order if len(k) <= ALERT_MAX_NAME_CHARS][:ALERT_MAX_ENTRIES]
    return {k: entries[k][:ALERT_MAX_VALUE_CHARS] for k in kept}


def _label_tags(labels: dict[str, str]) -> list[str]:
    order = [k for k in ("alertname", "severity") if k in labels] + sorted(
        k for k in labels if k not in ("alertname", "severity"))
    tags = [f"{k}={labels[k]}" for k in order]
    return [t for t in tags if len(t) <= MAX_LABEL_TAG_CHARS][:MAX_LABEL_TAGS]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_ticket(payload: AlertmanagerPayload, alert: AlertmanagerAlert, max_chars: int) -> Ticket:
    """The ticket of a firing alert: a title and description a Planner can work from, its labels, its
    incident and its retrieval keys. Title + description stay within `max_chars` (serve.max_ticket_chars)."""
    labels, notes, name = alert.labels, alert.notes, alert.name
    summary = _one_line(notes.get("summary") or notes.get("message") or notes.get("title") or "")
    where = next((labels[k] for k in ("instance", "pod", "node", "service", "job") if labels.get(k)), "")
    title = f"{name}: {summary}" if summary else f"{name} firing" + (f" on {where}" if where else "")
    title = title.replace("\x00", "")[: min(500, max_chars)]
    severity = labels.get("severity")
    lines = []
    details = notes.get("description") or (notes.get("message") if notes.get("summary") else "")
    if details:
        lines.append(details.strip())
    lines.append(f"Alert {name}" + (f" (severity {severity})" if severity else "") +
                 f" firing since {alert.starts_at.isoformat()}.")
    rest = [f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname"]
    if rest:
        lines.append("Labels: " + ", ".join(rest))
    if notes.get("runbook_url"):
        lines.append(f"Runbook: {notes['runbook_url'].strip()}")
    room = max(0, min(20000, max_chars - len(title) - 1))
    description = "\n".join(lines).replace("\x00", "")[:room]
    context = AlertContext(
        source=SOURCE, fingerprint=alert.fingerprint, starts_at=alert.starts_at,
        labels=_bounded(labels, ("alertname", "severity")),
        annotations=_bounded(notes, ("summary", "description", "runbook_url")),
        incident=incident_id(payload.group_key, name), group_key=payload.group_key[:ALERT_MAX_VALUE_CHARS],
        keys=retrieval_keys(alert))
    return Ticket(title=title, description=description, source=SOURCE, labels=_label_tags(labels),
                  id=ticket_id(alert.fingerprint, alert.starts_at), alert=context)


def resolved_at(alert: AlertmanagerAlert) -> float:
    """When a resolved alert ended (its endsAt; now when Alertmanager sent none)."""
    if alert.ends_at is not None and alert.ends_at.year > 1:
        return alert.ends_at.timestamp()
    return time.time()


def ticket_fields(row: dict) -> dict:
    """What GET /v1/tickets/{id} adds for a ticket raised from an alert: {"alert": {...}}; {} otherwise."""
    alert = (row.get("request") or {}).get("alert")
    if not isinstance(alert, dict):
        return {}
    resolved = (row.get("annotations") or {}).get("resolved")
    at = resolved.get("at") if isinstance(resolved, dict) else None
    when = datetime.fromtimestamp(at, timezone.utc).isoformat() if isinstance(at, (int, float)) else None
    return {"alert": {**alert, "resolved": resolved is not None, "resolved_at": when}}


# ---- the receiver --------------------------------------------------------------------------------------
class AlertReceiver:
    def __init__(self, flood: FloodGate, store: TicketStore, max_ticket_chars: int):
        self.flood, self.store, self.max_ticket_chars = flood, store, max_ticket_chars

    def receive(self, payload: AlertmanagerPayload, n: int | None = None, on_resolved: str = "cancel",
                principal: str | None = None, webhook: dict | None = None) -> JSONResponse:
        """Tickets for the firing alerts, resolved marks for the resolved ones (module doc)."""
        outcomes: list[AlertOutcome] = []
        refused: list[Overloaded] = []
        for alert in payload.alerts:
            if alert.status == "firing":
                out, exc = self._firing(payload, alert, n, principal, webhook)
                if exc is not None:
                    refused.append(exc)
            else:
                out = self._resolved(payload, alert, cancel=on_resolved == "cancel")
            outcomes.append(out)
        incidents: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        for o in outcomes:
            incidents.setdefault(o.incident, []).append(o.ticket_id)
            counts[o.outcome] = counts.get(o.outcome, 0) + 1
        receipt = AlertmanagerReceipt(receiver=payload.receiver, group_key=payload.group_key, status=payload.status,
                                      alerts=outcomes, incidents=incidents, counts=counts)
        if payload.truncated_alerts:
            log.warning("alert group %s: Alertmanager left out %d alerts (its max_alerts)", payload.group_key,
                        payload.truncated_alerts)
        if not refused:
            return JSONResponse(status_code=200, content=receipt.model_dump(mode="json"))
        retry = max(exc.retry_after_s for exc in refused)
        receipt.detail = (f"{len(refused)} firing alerts refused ({refused[0].reason}); the others are accepted, "
                          "and a retry finds them as duplicates")
        return JSONResponse(status_code=503, content=receipt.model_dump(mode="json"),
                            headers={"Retry-After": str(max(1, retry))})

    def _outcome(self, alert: AlertmanagerAlert, tid: str, incident: str, outcome: str, row: dict | None,
                 detail: str | None = None) -> AlertOutcome:
        return AlertOutcome(ticket_id=tid, fingerprint=alert.fingerprint, alertname=alert.name,
                            alert_status=alert.status, incident=incident, outcome=outcome,
                            ticket_status=row["status"] if row else None,
                            status_url=f"/v1/tickets/{tid}" if row else None, detail=detail)

    def _firing(self, payload, alert, n, principal, webhook) -> tuple[AlertOutcome, Overloaded | None]:
        ticket = build_ticket(payload, alert, self.max_ticket_chars)
        tid, incident = ticket.id, ticket.alert.incident
        row = self.store.get(tid)
        if row is None:
            try:
                self.flood.submit_async(ticket, n, None, principal=principal, webhook=webhook)
            except Overloaded as exc:
                return self._outcome(alert, tid, incident, "refused", None, exc.reason), exc
            except AlreadySubmitted:  # a concurrent notification of the same alert got there first
                pass
            else:
                return self._outcome(alert, tid, incident, "queued", self.store.get(tid)), None
        return self._outcome(alert, tid, incident, "duplicate", self.store.get(tid)), None

    def _resolved(self, payload, alert, cancel: bool) -> AlertOutcome:
        tid, incident = ticket_id(alert.fingerprint, alert.starts_at), incident_id(payload.group_key, alert.name)
        row = self.store.get(tid)
        if row is None:
            return self._outcome(alert, tid, incident, "unknown", None, "no ticket for this alert firing")
        # A result webhook's receiver waits for the result: such a ticket is computed, never cancelled.
        cancel = cancel and not (row.get("params") or {}).get("webhook")
        at = resolved_at(alert)
        when = datetime.fromtimestamp(at, timezone.utc).isoformat()
        row = self.store.resolve(tid, at, cancel_queued=cancel,
                                 reason=f"cancelled before it ran: its alert resolved at {when}")
        if row is None:
            return self._outcome(alert, tid, incident, "unknown", None, "no ticket for this alert firing")
        return self._outcome(alert, tid, incident, "cancelled" if row["status"] == CANCELLED else "resolved", row)
