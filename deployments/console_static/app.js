// FlowRouter operator console. Plain browser JavaScript, no build step.
//
// Security rules of this file: everything that comes from tickets, models or the API is placed in the
// page as text (textContent / createTextNode), never as markup. The only markup inserted is the SVG that
// mermaid.js renders in 'strict' security level, which is parsed as XML and stripped of scripts, event
// handlers and external links before it is attached. The page's Content-Security-Policy forbids inline
// scripts as a second line of defence.
"use strict";

(() => {
  const KEY_STORE = "flowrouter.apiKey";
  const state = { config: { mermaid: false, stats_poll_s: 2, auth_mode: "keys" }, result: null, shown: null,
                  statsTimer: null, chartSeq: 0, mermaidReady: null, opsLoaded: false, linked: null, edit: null };

  // ---- small DOM helpers (text only) ---------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = String(v);
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }
  const fmt = (v, digits = 2) => (typeof v === "number" && isFinite(v) ? v.toFixed(digits) : (v ?? "—"));
  const num = (v) => (Number.isInteger(v) ? String(v) : Math.abs(v) >= 100 ? v.toFixed(0)
                                                      : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3));
  function setStatus(node, text, kind) {
    node.textContent = text || "";
    node.classList.remove("error", "ok");
    if (kind) node.classList.add(kind);
  }

  // ---- API -------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail, retryAfter) {
      super(`HTTP ${status}: ${detail}`);
      this.status = status; this.detail = detail; this.retryAfter = retryAfter;
    }
  }
  function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }
  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    const key = apiKey();
    if (key) headers["Authorization"] = "Bearer " + key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                     credentials: "omit", cache: "no-store" });
    const type = resp.headers.get("content-type") || "";
    const data = type.includes("json") ? await resp.json().catch(() => null) : null;
    if (!resp.ok) {
      let detail = data && typeof data.detail === "string" ? data.detail : resp.statusText;
      // A 422 from request validation lists the reasons field by field; the operator needs them, not "invalid".
      const reasons = data && Array.isArray(data.errors) ? data.errors : data && Array.isArray(data.detail) ? data.detail : [];
      if (reasons.length) detail += ": " + reasons.map(validationReason).join("; ");
      if (resp.status === 401) detail = "an API key is needed (" + detail + ")";
      if (resp.status === 403) detail = "this key may not do that (" + detail + ")";
      throw new ApiError(resp.status, detail, resp.headers.get("retry-after"));
    }
    return { data, status: resp.status };
  }
  function validationReason(e) {
    const loc = (Array.isArray(e && e.loc) ? e.loc : []).filter((p) => p !== "body").join(".");
    const msg = String((e && e.msg) || "").replace(/^Value error, /, "");
    return loc ? `${loc}: ${msg}` : msg;
  }
  function explain(err) {
    if (err instanceof ApiError) {
      return err.status === 429 ? `${err.detail} (retry after ${err.retryAfter || "?"} s)` : err.message;
    }
    return String(err && err.message ? err.message : err);
  }

  // ---- mermaid -----------------------------------------------------------------------------------
  function loadMermaid() {
    if (state.mermaidReady) return state.mermaidReady;
    state.mermaidReady = new Promise((resolve) => {
      if (!state.config.mermaid) return resolve(false);
      const s = document.createElement("script");
      s.src = "/console/mermaid.min.js";
      s.onload = () => {
        try {
          // strict: labels are sanitised by mermaid, click/callback directives are disabled. HTML labels
          // decode the entity codes the server writes (#lt; #124; ...) into literal text.
          window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "default",
                                      flowchart: { htmlLabels: true, useMaxWidth: true, wrappingWidth: 260 },
                                      maxTextSize: 60000 });
          resolve(true);
        } catch (e) { console.error("mermaid init failed", e); resolve(false); }
      };
      s.onerror = () => resolve(false);
      document.head.appendChild(s);
    });
    return state.mermaidReady;
  }

  const DANGEROUS = new Set(["script", "iframe", "object", "embed", "link", "meta", "base", "form", "input",
                             "button", "textarea", "audio", "video", "animate", "set", "handler", "frame",
                             "frameset", "template", "noscript", "svg:script"]);
  function sanitizeSvg(root) {
    const walker = [root];
    while (walker.length) {
      const node = walker.pop();
      for (const child of Array.from(node.children)) {
        if (DANGEROUS.has(child.localName.toLowerCase())) { child.remove(); continue; }
        walker.push(child);
      }
      for (const attr of Array.from(node.attributes || [])) {
        const name = attr.name.toLowerCase();
        const value = attr.value.trim().toLowerCase();
        if (name.startsWith("on")) node.removeAttribute(attr.name);
        else if ((name === "href" || name.endsWith(":href") || name === "src" || name === "action")
                 && !value.startsWith("#")) node.removeAttribute(attr.name);
        else if (name === "style" && /url\s*\(|expression|javascript:/.test(value)) node.removeAttribute(attr.name);
      }
    }
    return root;
  }

  async function drawChart(container, mermaidText, steps, edges) {
    container.replaceChildren();
    const ok = await loadMermaid();
    if (ok) {
      const id = "fr-chart-" + (++state.chartSeq);
      try {
        const { svg } = await window.mermaid.render(id, mermaidText);
        // Parsed in an inert document (its scripts never run), cleaned, then adopted.
        const doc = new DOMParser().parseFromString(svg, "text/html");
        const root = doc.body.firstElementChild;
        if (!root || root.localName !== "svg" || doc.body.children.length !== 1) {
          throw new Error("renderer returned no single SVG");
        }
        container.appendChild(document.importNode(sanitizeSvg(root), true));
        container.dataset.rendered = "svg";
        return;
      } catch (e) {
        console.warn("mermaid could not draw this workflow", e);
        document.getElementById(id)?.remove();
        document.getElementById("d" + id)?.remove();
        container.appendChild(el("p", { class: "status error", text: "The flowchart could not be drawn; the steps are listed below." }));
      }
    } else {
      container.appendChild(el("p", { class: "muted", text: "mermaid.js is not installed on this server: the workflow is shown as text." }));
    }
    container.appendChild(el("pre", { text: workflowText(steps, edges) }));
    container.dataset.rendered = "text";
  }

  function workflowText(steps, edges) {
    const number = new Map(steps.map((s, i) => [s.id, i + 1]));
    const lines = [];
    for (const s of steps) {
      const mark = s.kind === "decision" ? "?" : s.kind === "terminal" ? "■" : s.action === "change" ? "!" : " ";
      lines.push(`${String(number.get(s.id)).padStart(2)}.${mark} ${s.text}`);
      if (s.kind === "decision") {
        for (const e of edges.filter((x) => x.source === s.id)) lines.push(`      ${e.label || "→"}: go to ${number.get(e.target)}`);
      }
    }
    return lines.join("\n");
  }

  function renderSteps(list, steps, edges) {
    list.replaceChildren();
    const number = new Map(steps.map((s, i) => [s.id, i + 1]));
    for (const s of steps) {
      const change = s.kind === "process" && s.action === "change";
      const li = el("li", change ? { class: "change" } : {},
        el("span", { class: "kind", text: change ? "change" : s.kind }), s.text);
      if (s.kind === "decision") {
        for (const e of edges.filter((x) => x.source === s.id)) {
          li.appendChild(el("div", { class: "branch", text: `${e.label || "→"}: go to step ${number.get(e.target)}` }));
        }
      }
      if (s.source) li.appendChild(el("div", { class: "source", "data-source": s.source, text: "from " + itemLabel(s.source) }));
      list.appendChild(li);
    }
  }

  function knowledgeText(r) {
    const k = r.knowledge || {};
    if (k.status && k.status !== "matched") return `${k.status}: the workflow is the model's own`;
    const nodes = (k.items || []).filter((i) => i.kind === "node").map((i) => `${i.title} (${i.source || i.id})`);
    const scope = k.scope && k.scope !== "unscoped" ? ` [${k.scope}]` : "";
    const ref = (k.items || []).find((i) => i.id === k.reference && i.kind === "case");
    const lead = ref ? `past case ${ref.title} (${ref.id})${nodes.length ? "; " : ""}` : "";
    return lead + (nodes.length ? nodes.join(", ") : ref ? "" : (r.context_ids || []).join(", ")) + scope;
  }

  // ---- provenance: the runbook nodes, chunks and past cases a workflow was grounded in ------------------
  function knowledgeItems() {
    return (state.result && state.result.knowledge && state.result.knowledge.items) || [];
  }
  function itemLabel(id) {
    const item = knowledgeItems().find((i) => i.id === id);
    return item ? `${item.kind} ${item.title} (${item.id})` : id;
  }

  function renderProvenance(r) {
    const k = r.knowledge || {};
    const items = k.items || [];
    const summary = [k.status || ((r.context_ids || []).length ? "matched" : "none matched")];
    if (k.scope && k.scope !== "unscoped") summary.push(k.scope);
    if (k.version) summary.push(`knowledge base ${k.version}`);
    if (k.cases_version) summary.push(`case memory revision ${k.cases_version}`);
    $("grounding-summary").textContent = summary.join(" · ");
    const ref = items.find((i) => i.id === k.reference);
    $("grounding-reference").textContent = k.reference
      ? `reference followed: ${ref ? `${ref.kind} ${ref.title}` : ""} (${k.reference})`
      : "no reference workflow: the expert wrote its own";
    $("grounding").tBodies[0].replaceChildren(...items.map((i) =>
      el("tr", { "data-id": i.id, "data-kind": i.kind, class: i.id === k.reference ? "best" : null },
        el("td", { text: i.kind }), el("td", { text: i.title }), el("td", { class: "mono", text: i.id }),
        el("td", { text: i.source || "" }), el("td", { text: fmt(i.score, 3) }),
        el("td", { text: i.id === k.reference ? "reference" : "" }))));
    if (!items.length) {
      $("grounding").tBodies[0].appendChild(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "nothing was shown to the expert" })));
    }
    const cases = r.similar_cases || [];
    $("similar-cases").tBodies[0].replaceChildren(...cases.map((c) =>
      el("tr", { "data-ticket": c.ticket_id, class: c.reference ? "best" : null },
        el("td", {}, el("button", { type: "button", class: "link open-case", title: "open this ticket", text: c.ticket_id,
                                    onclick: () => { $("lookup-id").value = c.ticket_id; lookupTicket(); } })),
        el("td", { text: fmt(c.similarity, 3) }), el("td", { text: c.verdict === "edit" ? "edited" : "accepted" }),
        el("td", { text: c.title || "" }),
        el("td", { text: c.reference ? "reference" : c.shown ? "shown" : "retrieved" }))));
    if (!cases.length) {
      $("similar-cases").tBodies[0].appendChild(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "no similar past case" })));
    }
  }

  // ---- ticket view -------------------------------------------------------------------------------
  const DIMS = ["relevance", "coverage", "accuracy", "coherence", "conciseness"];

  async function showWorkflow(wf, label) {
    $("shown-candidate").textContent = label;
    $("mermaid-src").textContent = wf.mermaid;
    renderSteps($("steps"), wf.steps, wf.edges);
    await drawChart($("chart"), wf.mermaid, wf.steps, wf.edges);
  }

  async function showCandidate(index) {
    const r = state.result;
    const cand = r.candidates.find((c) => c.index === index) || r.candidates[r.best_index];
    state.shown = cand.index;
    closeEditor();
    for (const tr of $("candidates").tBodies[0].rows) tr.classList.toggle("shown", Number(tr.dataset.index) === cand.index);
    await showWorkflow(cand.workflow, `${cand.index}${cand.index === r.best_index ? " (best)" : ""}`);
  }

  async function showResult(r, title) {
    state.result = r;
    $("result").hidden = false;
    if (r.ticket_id && window.history.replaceState) {  // the address bar now links to this ticket
      window.history.replaceState(null, "", "/tickets/" + encodeURIComponent(r.ticket_id));
    }
    $("result-title").textContent = title ? `Ticket: ${title}` : `Ticket ${r.ticket_id}`;
    const facts = [
      ["ticket id", r.ticket_id], ["task", r.task], ["confidence", fmt(r.confidence)],
      ["decision path", r.decision_path], ["expert", r.expert], ["map version", r.map_version],
      ["knowledge", knowledgeText(r)], ["knowledge version", r.knowledge_version], ["shared", r.shared],
      ["dropped candidates", r.dropped_candidates],
      ["timings (ms)", Object.entries(r.timings_ms || {}).map(([k, v]) => `${k} ${Math.round(v)}`).join(", ")],
    ];
    const dl = $("decision");
    dl.replaceChildren();
    for (const [k, v] of facts) {
      if (v === undefined || v === null || v === "") continue;
      dl.append(el("dt", { text: k }), el("dd", { "data-field": k.replace(/\W+/g, "-"), text: v }));
    }
    const tbody = $("candidates").tBodies[0];
    tbody.replaceChildren();
    for (const c of r.candidates) {
      const tr = el("tr", { "data-index": c.index, class: c.index === r.best_index ? "best" : null },
        el("td", { text: c.index + (c.index === r.best_index ? " ★" : "") }), el("td", { text: c.origin }),
        ...DIMS.map((d) => el("td", { text: fmt(c.scores[d]) })), el("td", { text: fmt(c.scores.overall) }),
        el("td", {}, el("button", { type: "button", class: "view-candidate", text: "view",
                                    onclick: () => showCandidate(c.index) })));
      tbody.appendChild(tr);
    }
    const ctx = $("context-ids");
    ctx.replaceChildren(...(r.context_ids || []).map((id) => el("li", { text: id })));
    if (!ctx.children.length) ctx.appendChild(el("li", { class: "muted", text: "none" }));
    const ex = $("examples").tBodies[0];
    ex.replaceChildren(...(r.retrieved_examples || []).map((e) =>
      el("tr", {}, el("td", { text: e.id ?? "" }), el("td", { text: e.task ?? "" }), el("td", { text: fmt(e.similarity, 3) }))));
    renderProvenance(r);
    setStatus($("feedback-status"), "");
    $("accept").disabled = $("reject").disabled = $("edit").disabled = false;
    await showCandidate(r.best_index);
  }

  async function waitForResult(ticketId) {
    for (let i = 0; i < 1800; i++) {
      const { data } = await api("GET", `/v1/tickets/${encodeURIComponent(ticketId)}`);
      if (data.status === "done" && data.result) return data.result;
      if (data.status === "failed") throw new Error(`ticket failed: ${data.error || "unknown error"}`);
      setStatus($("ticket-status"), `ticket ${ticketId} is ${data.status}…`);
      await new Promise((res) => setTimeout(res, 1000));
    }
    throw new Error("gave up waiting for the result");
  }

  async function submitTicket(ev) {
    ev.preventDefault();
    const title = $("t-title").value.trim();
    if (!title) { setStatus($("ticket-status"), "a title is needed", "error"); return; }
    const body = { title, description: $("t-description").value };
    const source = $("t-source").value.trim();
    if (source) body.source = source;
    const labels = $("t-labels").value.split(",").map((s) => s.trim()).filter(Boolean);
    if (labels.length) body.labels = labels;
    const params = new URLSearchParams();
    const n = parseInt($("t-candidates").value, 10);
    if (n >= 1 && n <= 16) params.set("candidates", String(n));
    if ($("t-expert").value) params.set("expert", $("t-expert").value);
    const button = $("submit-ticket");
    button.disabled = true;
    const started = performance.now();
    setStatus($("ticket-status"), "solving… (classify → route → write candidates → score)");
    try {
      const { data } = await api("POST", `/v1/tickets?${params}`, body);
      const result = data && data.workflow ? data : await waitForResult(data.ticket_id);
      setStatus($("ticket-status"), `done in ${((performance.now() - started) / 1000).toFixed(1)} s`, "ok");
      await showResult(result, title);
    } catch (err) {
      setStatus($("ticket-status"), explain(err), "error");
    } finally {
      button.disabled = false;
    }
  }

  async function lookupTicket() {
    const id = $("lookup-id").value.trim();
    if (!id) return;
    try {
      const { data } = await api("GET", `/v1/tickets/${encodeURIComponent(id)}`);
      if (data.status !== "done" || !data.result) {
        setStatus($("ticket-status"), `ticket ${id} is ${data.status}${data.error ? ": " + data.error : ""}`);
        return;
      }
      setStatus($("ticket-status"), "");
      await showResult(data.result, null);
    } catch (err) { setStatus($("ticket-status"), explain(err), "error"); }
  }

  // ---- deep links: /tickets/{id} opens that ticket (the link webhook messages carry) -------------------
  function linkedTicketId() {
    const m = /^\/tickets\/([^/]+)\/?$/.exec(window.location.pathname);
    if (!m) return null;
    try { return decodeURIComponent(m[1]); } catch (err) { return null; }
  }

  async function openLinkedTicket() {
    const id = state.linked;
    if (!id) return;
    $("lookup-id").value = id;
    try {
      const { data } = await api("GET", `/v1/tickets/${encodeURIComponent(id)}`);
      const result = data.status === "done" && data.result ? data.result : await waitForResult(id);
      state.linked = null;
      setStatus($("ticket-status"), "");
      await showResult(result, null);
    } catch (err) {
      // 401/403: the key is missing or lacks the role; entering one tries again (refreshIdentity).
      setStatus($("ticket-status"), explain(err), "error");
    }
  }

  async function sendFeedback(verdict) {
    const r = state.result;
    if (!r) return;
    const body = { verdict, candidate: state.shown };
    const comment = $("feedback-comment").value.trim();
    if (comment) body.comment = comment;
    $("accept").disabled = $("reject").disabled = true;
    try {
      const { data } = await api("POST", `/v1/tickets/${encodeURIComponent(r.ticket_id)}/feedback`, body);
      setStatus($("feedback-status"), `${data.verdict}ed candidate ${data.candidate} — feedback #${data.feedback_id} stored`, "ok");
    } catch (err) {
      setStatus($("feedback-status"), explain(err), "error");
      $("accept").disabled = $("reject").disabled = false;
    }
  }

  // ---- editing a workflow in place: the operator's correction, sent as an `edit` feedback -------------
  // The editor holds rows with stable keys. A step or change continues with the row below unless it names
  // another row; a decision names its yes and no rows; an end row stops. Targets follow rows by key, so
  // moving a row keeps the decisions that lead to it; the sent workflow numbers the rows S1..Sn in order.
  const EDIT_KINDS = [["process", "step"], ["change", "change"], ["decision", "decision"], ["terminal", "end"]];
  const flows = (row) => row.kind === "process" || row.kind === "change";

  function editorRows(steps) {
    const key = new Map(steps.map((s, i) => [s.id, i + 1]));
    return steps.map((s, i) => {
      const below = i + 1 < steps.length ? steps[i + 1].id : null;
      return { key: i + 1, kind: s.kind === "process" && s.action === "change" ? "change" : s.kind, text: s.text,
               original: s.text, source: s.source || null,
               next: s.kind === "process" && s.next && s.next !== below ? (key.get(s.next) ?? null) : null,
               yes: s.kind === "decision" ? (key.get(s.yes) ?? null) : null,
               no: s.kind === "decision" ? (key.get(s.no) ?? null) : null };
    });
  }

  function settle(rows) {  // an explicit target that is the row below reads as "the step below"
    rows.forEach((r, i) => { if (flows(r) && rows[i + 1] && r.next === rows[i + 1].key) r.next = null; });
    return rows;
  }

  function deleteRow(rows, key) {
    const i = rows.findIndex((r) => r.key === key);
    if (i < 0) return rows;
    const gone = rows[i];
    // What led to the deleted row now leads where it led (a step is bypassed); a decision's branch into a
    // deleted decision or end has no such successor and must be chosen again.
    const after = flows(gone) ? (gone.next ?? (rows[i + 1] ? rows[i + 1].key : null)) : null;
    const above = i > 0 && flows(rows[i - 1]) && rows[i - 1].next === null ? rows[i - 1] : null;
    rows.splice(i, 1);
    if (above) above.next = after;
    for (const r of rows) {
      for (const f of ["next", "yes", "no"]) if (r[f] === key) r[f] = after;
    }
    return settle(rows);
  }

  function moveRow(rows, key, by) {
    const i = rows.findIndex((r) => r.key === key);
    const j = i + by;
    if (i < 0 || j < 0 || j >= rows.length) return rows;
    [rows[i], rows[j]] = [rows[j], rows[i]];
    return settle(rows);
  }

  function insertRow(rows, afterKey, key) {
    const i = afterKey === null ? rows.length - 1 : rows.findIndex((r) => r.key === afterKey);
    rows.splice(i + 1, 0, { key, kind: "process", text: "", original: null, source: null, next: null, yes: null, no: null });
    return settle(rows);
  }

  function setKind(rows, key, kind) {
    const i = rows.findIndex((r) => r.key === key);
    const r = rows[i];
    const wasDecision = r.kind === "decision";
    r.kind = kind;
    if (kind === "decision" && !wasDecision) {
      // yes: the row below; no: the first end row further down (both can be changed).
      r.yes = rows[i + 1] ? rows[i + 1].key : null;
      const end = rows.slice(i + 1).find((x) => x.kind === "terminal" && x.key !== r.yes);
      r.no = end ? end.key : null;
      r.next = null;
    } else if (kind !== "decision") {
      r.yes = r.no = null;
      if (kind === "terminal") r.next = null;
    }
    return rows;
  }

  function editedSteps(rows) {
    const id = new Map(rows.map((r, i) => [r.key, "S" + (i + 1)]));
    return rows.map((r, i) => {
      const n = i + 1;
      const text = String(r.text || "").trim();
      if (!text) throw new Error(`step ${n} has no text`);
      const step = { id: id.get(r.key), kind: r.kind === "change" ? "process" : r.kind, text,
                     action: r.kind === "change" ? "change" : "observe" };
      if (flows(r)) {
        const next = r.next !== null && id.has(r.next) ? id.get(r.next) : rows[i + 1] ? id.get(rows[i + 1].key) : null;
        if (!next) throw new Error(`step ${n} is the last one and leads nowhere: make it an end step or add a step below`);
        step.next = next;
      } else if (r.kind === "decision") {
        if (!id.has(r.yes) || !id.has(r.no)) throw new Error(`decision ${n} needs a yes step and a no step`);
        step.yes = id.get(r.yes);
        step.no = id.get(r.no);
      }
      if (r.source && text === r.original) step.source = r.source;  // a rewritten step no longer cites it
      return step;
    });
  }

  const rowLabel = (rows, pos) => {
    const t = String(rows[pos - 1].text || "").trim() || "(no text yet)";
    return `${pos}. ${t.length > 48 ? t.slice(0, 47) + "…" : t}`;
  };

  // Option values are 1-based row positions (what the operator reads); the rows keep keys.
  function targetSelect(cls, label, value, rows, self, placeholder) {
    const sel = el("select", { class: "e-target " + cls, "aria-label": label });
    sel.appendChild(el("option", { value: "", text: placeholder }));
    rows.forEach((r, j) => { if (r.key !== self) sel.appendChild(el("option", { value: String(j + 1), text: rowLabel(rows, j + 1) })); });
    const pos = rows.findIndex((r) => r.key === value);
    sel.value = pos >= 0 ? String(pos + 1) : "";
    return sel;
  }

  function editorRow(r, i, rows) {
    const ed = state.edit;
    const redraw = (fn) => () => { fn(); renderEditor(); };
    const keyAt = (sel) => (sel.value ? rows[Number(sel.value) - 1].key : null);
    const kind = el("select", { class: "e-kind", "aria-label": `kind of step ${i + 1}` },
                    ...EDIT_KINDS.map(([v, t]) => el("option", { value: v, text: t })));
    kind.value = r.kind;
    kind.addEventListener("change", redraw(() => setKind(rows, r.key, kind.value)));
    const text = el("input", { class: "e-text", maxlength: 500, value: r.text, "aria-label": `text of step ${i + 1}`,
                               placeholder: r.kind === "decision" ? "a yes/no question" : "what to check or do" });
    text.addEventListener("input", () => { r.text = text.value; refreshLabels(); });
    const targets = el("span", { class: "e-targets" });
    if (flows(r)) {
      const next = targetSelect("e-next", `step ${i + 1} continues with`, r.next, rows, r.key, "then the step below");
      next.addEventListener("change", redraw(() => { r.next = keyAt(next); settle(rows); }));
      targets.append(next);
    } else if (r.kind === "decision") {
      const yes = targetSelect("e-yes", `step ${i + 1}: if yes`, r.yes, rows, r.key, "yes: choose a step…");
      const no = targetSelect("e-no", `step ${i + 1}: if no`, r.no, rows, r.key, "no: choose a step…");
      yes.addEventListener("change", () => { r.yes = keyAt(yes); });
      no.addEventListener("change", () => { r.no = keyAt(no); });
      targets.append(el("label", { class: "inline" }, "yes →", yes), el("label", { class: "inline" }, "no →", no));
    }
    const li = el("li", { class: "edit-row " + r.kind, "data-pos": i + 1 },
      el("span", { class: "num", text: `${i + 1}.` }), kind, text, targets,
      el("span", { class: "e-buttons" },
        el("button", { type: "button", class: "e-up", title: "move up", "aria-label": `move step ${i + 1} up`,
                       disabled: i === 0, text: "↑", onclick: redraw(() => moveRow(rows, r.key, -1)) }),
        el("button", { type: "button", class: "e-down", title: "move down", "aria-label": `move step ${i + 1} down`,
                       disabled: i === rows.length - 1, text: "↓", onclick: redraw(() => moveRow(rows, r.key, 1)) }),
        el("button", { type: "button", class: "e-insert", title: "add a step below", text: "+",
                       onclick: redraw(() => insertRow(rows, r.key, ++ed.seq)) }),
        el("button", { type: "button", class: "e-delete", title: "delete this step", "aria-label": `delete step ${i + 1}`,
                       disabled: rows.length === 1, text: "✕", onclick: redraw(() => deleteRow(rows, r.key)) })));
    if (r.source) {
      li.appendChild(el("div", { class: "source", text: (r.text === r.original ? "from " : "was from ") + itemLabel(r.source) }));
    }
    return li;
  }

  function refreshLabels() {  // option texts follow the rows' texts without redrawing (focus stays put)
    const rows = state.edit.rows;
    for (const opt of document.querySelectorAll("#editor select.e-target option, #edit-outcome-step option")) {
      if (opt.value) opt.textContent = rowLabel(rows, Number(opt.value));
    }
  }

  function renderEditor() {
    const ed = state.edit;
    $("edit-steps").replaceChildren(...ed.rows.map((r, i) => editorRow(r, i, ed.rows)));
    const step = targetSelect("", "the step that resolved it", ed.outcomeKey, ed.rows, null, "which step resolved it?");
    step.id = "edit-outcome-step";
    step.disabled = $("edit-outcome").value !== "resolved";
    step.addEventListener("change", () => { ed.outcomeKey = step.value ? ed.rows[Number(step.value) - 1].key : null; });
    $("edit-outcome-step").replaceWith(step);
  }

  function openEditor() {
    const r = state.result;
    if (!r) return;
    const cand = r.candidates.find((c) => c.index === state.shown) || r.candidates[r.best_index];
    const rows = editorRows(cand.workflow.steps);
    state.edit = { candidate: cand.index, rows, seq: rows.length, outcomeKey: null };
    $("edit-candidate").textContent = String(cand.index);
    $("edit-comment").value = $("feedback-comment").value;
    $("edit-outcome").value = "";
    setStatus($("edit-status"), "");
    $("edit-send").disabled = false;
    renderEditor();
    $("editor").hidden = false;
  }

  function closeEditor() {
    state.edit = null;
    $("editor").hidden = true;
  }

  async function sendEdit() {
    const r = state.result;
    const ed = state.edit;
    if (!r || !ed) return;
    let steps;
    try { steps = editedSteps(ed.rows); } catch (err) { setStatus($("edit-status"), err.message, "error"); return; }
    const body = { verdict: "edit", candidate: ed.candidate, steps };
    const comment = $("edit-comment").value.trim();
    if (comment) body.comment = comment;
    const status = $("edit-outcome").value;
    if (status) {
      body.outcome = { status };
      const pos = ed.rows.findIndex((x) => x.key === ed.outcomeKey);
      if (status === "resolved" && pos >= 0) body.outcome.step = pos + 1;
    }
    $("edit-send").disabled = true;
    setStatus($("edit-status"), "sending…");
    try {
      const { data } = await api("POST", `/v1/tickets/${encodeURIComponent(r.ticket_id)}/feedback`, body);
      closeEditor();
      setStatus($("feedback-status"), `correction of candidate ${data.candidate} stored — feedback #${data.feedback_id}`
                                      + (data.case ? `, ${data.case}` : ""), "ok");
      if (data.workflow) await showWorkflow(data.workflow, `correction of ${data.candidate}`);
    } catch (err) {
      // The API's reason (422: the graph it refused and why) is what the operator fixes.
      setStatus($("edit-status"), explain(err), "error");
      $("edit-send").disabled = false;
    }
  }

  // ---- operations view ---------------------------------------------------------------------------
  function flatten(obj, prefix = "", out = []) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
      else if (typeof v === "number" || typeof v === "string" || typeof v === "boolean") out.push([key, v]);
    }
    return out;
  }
  const HIGHLIGHT = [
    [/(tickets?_?per_?s|throughput|rps|per_second)/i, "tickets/s"], [/p50/i, "latency p50"], [/p95/i, "latency p95"],
    [/p99/i, "latency p99"], [/unknown/i, "unknown rate"], [/coalesc|cache|shared/i, "coalesced / cached"],
    [/reject|429|503|shed/i, "rejects"], [/in_?flight|running|queue|backlog|waiting/i, "in flight / queued"],
  ];

  async function refreshStats() {
    const cards = $("stats");
    const tbody = $("stats-table").tBodies[0];
    let rows = [];
    try {
      const { data } = await api("GET", "/v1/stats");
      rows = flatten(data);
      $("stats-source").textContent = "from /v1/stats";
    } catch (err) {
      const note = err instanceof ApiError && err.status === 404 ? "no /v1/stats on this service; store totals shown"
                                                                 : explain(err);
      try {
        const { data } = await api("GET", "/v1/console/overview");
        rows = flatten({ tickets: data.tickets, feedback: data.feedback });
      } catch (err2) { rows = []; }
      $("stats-source").textContent = note;
    }
    const picked = [];
    for (const [re, label] of HIGHLIGHT) {
      const hit = rows.find(([k, v]) => typeof v === "number" && re.test(k) && !picked.some((p) => p[0] === k));
      if (hit) picked.push([hit[0], hit[1], label]);
    }
    cards.replaceChildren(...picked.map(([k, v, label]) =>
      el("div", { class: "counter", title: k }, el("div", { class: "v", text: num(v) }),
         el("div", { class: "k", text: `${label} · ${k}` }))));
    tbody.replaceChildren(...rows.map(([k, v]) =>
      el("tr", {}, el("td", { text: k }), el("td", { text: typeof v === "number" ? num(v) : v }))));
  }

  function heatColor(v, lo, hi) {
    const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    const hue = 10 + 120 * Math.max(0, Math.min(1, t));
    return `hsl(${hue.toFixed(0)}, 65%, 80%)`;
  }
  function renderHeatmap(scores, source) {
    const tasks = Object.keys(scores || {});
    const experts = [...new Set(tasks.flatMap((t) => Object.keys(scores[t])))];
    const head = $("heatmap").tHead, body = $("heatmap").tBodies[0];
    head.replaceChildren(); body.replaceChildren();
    $("leaderboard-source").textContent = source;
    if (!tasks.length) return false;
    const values = tasks.flatMap((t) => Object.values(scores[t])).filter((v) => typeof v === "number");
    const lo = Math.min(...values), hi = Math.max(...values);
    head.appendChild(el("tr", {}, el("th", { text: "task \\ expert" }), ...experts.map((e) => el("th", { text: e }))));
    for (const t of tasks) {
      const best = experts.reduce((a, e) => (scores[t][e] ?? -Infinity) > (scores[t][a] ?? -Infinity) ? e : a, experts[0]);
      const tr = el("tr", {}, el("th", { text: t }));
      for (const e of experts) {
        const v = scores[t][e];
        const td = el("td", { class: e === best ? "winner" : null, text: typeof v === "number" ? v.toFixed(2) : "—" });
        if (typeof v === "number") td.style.backgroundColor = heatColor(v, lo, hi);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    return true;
  }

  async function refreshOps() {
    let mapData = null;
    try {
      mapData = (await api("GET", "/v1/map")).data;
      const cur = mapData.current;
      $("map-version").textContent = `${cur.version} · fallback ${cur.fallback} · ${cur.source || ""}`;
      $("map-routes").tBodies[0].replaceChildren(
        ...Object.entries(cur.routes).map(([t, e]) => el("tr", {}, el("td", { text: t }), el("td", { text: e }))),
        el("tr", {}, el("td", { text: "unknown" }), el("td", { text: cur.fallback })));
      $("map-history").tBodies[0].replaceChildren(...(mapData.history || []).slice().reverse().map((h) =>
        el("tr", { class: h.version === cur.version ? "best" : null }, el("td", { text: h.file ?? "" }),
           el("td", { text: h.version ?? "" }), el("td", { text: h.created ?? "" }), el("td", { text: h.source ?? "" }))));
    } catch (err) {
      $("map-version").textContent = explain(err);
    }
    const pngBox = $("leaderboard-png");
    pngBox.replaceChildren();
    try {
      const { data } = await api("GET", "/v1/console/leaderboard");
      let drawn = false;
      if (data.png) {
        const resp = await fetch("/v1/console/leaderboard.png", { headers: apiKey() ? { Authorization: "Bearer " + apiKey() } : {},
                                                                   credentials: "omit", cache: "no-store" });
        if (resp.ok) {
          const img = el("img", { alt: "leaderboard heatmap" });
          img.src = URL.createObjectURL(await resp.blob());
          pngBox.appendChild(img);
          drawn = true;
        }
      }
      const label = data.source === "leaderboard" ? `${data.taskset || ""} · updated ${data.updated || "?"}` : "";
      if (renderHeatmap(data.scores, label)) drawn = true;
      if (!drawn) {
        const scores = mapData && mapData.current && mapData.current.scores;
        if (!renderHeatmap(scores, "scores behind the current map")) {
          $("leaderboard-source").textContent = "no leaderboard yet (flowrouter leaderboard build)";
        }
      }
    } catch (err) {
      $("leaderboard-source").textContent = explain(err);
    }
  }

  function showView(id) {
    for (const b of document.querySelectorAll("nav .tab")) b.classList.toggle("active", b.dataset.view === id);
    for (const v of document.querySelectorAll("main .view")) v.hidden = v.id !== id;
    clearInterval(state.statsTimer);
    if (id === "view-ops") {
      refreshOps();
      refreshStats();
      state.statsTimer = setInterval(refreshStats, Math.max(500, state.config.stats_poll_s * 1000));
    }
  }

  // ---- key handling ----------------------------------------------------------------------------
  async function refreshIdentity() {
    const who = $("whoami");
    try {
      const { data } = await api("GET", "/v1/whoami");
      who.textContent = data.mode === "open" ? "open mode (no key needed)" : `signed in as ${data.id} (${data.role})`;
      if (state.linked) openLinkedTicket();
      try {
        const models = (await api("GET", "/v1/models")).data.data.map((m) => m.id).filter((m) => m !== "flowrouter");
        const sel = $("t-expert");
        sel.replaceChildren(el("option", { value: "", text: "route automatically" }),
                            ...models.map((m) => el("option", { value: m, text: m })));
      } catch (err) { /* the expert list is optional */ }
    } catch (err) {
      who.textContent = err instanceof ApiError && err.status === 401 ? "enter an API key" : explain(err);
    }
  }

  async function init() {
    try {
      const resp = await fetch("/console/config.json", { cache: "no-store" });
      if (resp.ok) state.config = Object.assign(state.config, await resp.json());
    } catch (err) { /* defaults */ }
    loadMermaid();
    state.linked = linkedTicketId();
    $("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("api-key").value.trim();
      if (key) sessionStorage.setItem(KEY_STORE, key);
      $("api-key").value = "";
      refreshIdentity();
    });
    $("key-forget").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORE); refreshIdentity(); });
    $("ticket-form").addEventListener("submit", submitTicket);
    $("lookup").addEventListener("click", lookupTicket);
    $("accept").addEventListener("click", () => sendFeedback("accept"));
    $("reject").addEventListener("click", () => sendFeedback("reject"));
    $("edit").addEventListener("click", openEditor);
    $("edit-cancel").addEventListener("click", closeEditor);
    $("edit-send").addEventListener("click", sendEdit);
    $("edit-add").addEventListener("click", () => { if (state.edit) { insertRow(state.edit.rows, null, ++state.edit.seq); renderEditor(); } });
    $("edit-outcome").addEventListener("change", () => {
      $("edit-outcome-step").disabled = $("edit-outcome").value !== "resolved";
      if ($("edit-outcome").value !== "resolved" && state.edit) { state.edit.outcomeKey = null; $("edit-outcome-step").value = ""; }
    });
    for (const b of document.querySelectorAll("nav .tab")) b.addEventListener("click", () => showView(b.dataset.view));
    refreshIdentity();
  }

  window.FlowRouterConsole = { workflowText, sanitizeSvg, editorRows, editedSteps, deleteRow, moveRow, insertRow, setKind };
  document.addEventListener("DOMContentLoaded", init);
})();
