"""Incident extraction from documents (FlowXpert Module 1, steps 1 and 2).

Two extractors produce `IncidentMention`s, one per incident mention:

* `RunbookExtractor` (deterministic) for structured runbooks: the document title is the incident,
  and Meaning / Impact / Diagnosis / Mitigation / Typical cases / Notes headings (and common
  synonyms) fill the fields. Most operation documents take this path.
* `LLMExtractor` for documents without that structure. A 135M model cannot write reliable JSON,
  so it is only asked for what it can do:
  (1) name the failure a paragraph describes, completion-style with a few short examples and a
      12-token budget; the name is kept only when its words are grounded in the text, otherwise
      the paragraph continues the previous incident (or the document title);
  (2) classify each sentence of the incident's paragraphs (current chunk, with the previous chunk
      as context) as symptom / check / fix / other through next-token probabilities blended with
      a lexical prior, so the fields are always well formed.
* `HeuristicExtractor`: step (2) with the lexical prior alone, for builds without an LLM.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from core.workflow.actions import CHECK_VERBS, FIX_VERBS
from experts.engines.base import Engine, SamplingParams
from experts.knowledge.chunking import Chunk
from experts.knowledge.documents import Document
from experts.knowledge.incident import IncidentMention
from experts.knowledge.markdown import (
    clean_inline,
    commands_from_code,
    find_references,
    finish_step,
    humanize,
    is_action,
    is_reference,
    leading_verb,
    list_items,
    parse_blocks,
    plain_text,
    section_steps,
    split_sections,
    split_sentences,
    whole_sentences,
)

log = logging.getLogger(__name__)

EXTRACT_VERSION = 2  # bump when extraction output changes so cached results are recomputed
MAX_DESCRIPTION = 1200
MAX_NOTES = 800


# ---- section roles --------------------------------------------------------------------------------
SECTION_ROLES: dict[str, tuple[str, ...]] = {
    "description": ("meaning", "description", "symptoms", "symptom", "overview", "summary", "what it means",
                    "what does it mean", "problem", "alert", "context"),
    "impact": ("impact", "severity", "consequences", "business impact"),
    "diagnosis": ("diagnosis", "diagnose", "diagnostics", "troubleshooting", "troubleshoot", "investigation",
                  "investigate", "checks", "runbook", "procedure", "steps", "triage", "debugging",
                  "how to investigate", "detection", "verification"),
    "mitigation": ("mitigation", "mitigations", "mitigate", "resolution", "remediation", "remedy", "fix",
                   "fixes", "solution", "solutions", "recovery", "workaround", "workarounds", "how to fix",
                   "resolve", "remediation steps"),
    "cases": ("typical cases", "typical case", "examples", "common causes", "causes", "known cases",
              "typical causes", "known issues", "past incidents"),
    "notes": ("notes", "note", "remarks", "caveats", "warnings", "see also", "references", "related",
              "further reading", "tips"),
}


def section_role(heading: str) -> str | None:
    h = re.sub(r"[^a-z ]+", " ", heading.lower())
    h = re.sub(r"\s+", " ", h).strip()
    for role, names in SECTION_ROLES.items():
        for n in names:
            if h == n or h.startswith(n + " "):
                return role
    return None


@dataclass
class RoleRegion:
    role: str
    start: int
    end: int
    heading: str


def role_regions(doc: Document) -> list[RoleRegion]:
    """Regions of the document under a role heading (its subsections included), in order.

    Text under the title that precedes every role heading is returned with role `lead`; sections
    with an unknown heading get role `other`.
    """
    sections = split_sections(doc.text, doc.body_start)
    regions: list[RoleRegion] = []
    active: tuple[int, RoleRegion] | None = None  # (level of the role heading, region)
    for sec in sections:
        if active and sec.level > active[0]:
            active[1].end = sec.end
            continue
        title = sec.heading_path[-1] if sec.heading_path else ""
        role = section_role(title) if sec.level > 0 else None
        is_title = sec.level == 0 or (sec.level == 1 and role is None)  # document (or part) titles
        role = "lead" if is_title else (role or "other")
        region = RoleRegion(role, sec.start, sec.end, title)
        regions.append(region)
        active = None if is_title else (sec.level, region)
    return regions


def is_structured(doc: Document) -> bool:
    """A runbook the deterministic extractor handles: it has a diagnosis- or mitigation-like heading."""
    if not doc.is_markdown:
        return False
    return any(r.role in ("diagnosis", "mitigation") for r in role_regions(doc))


def _cap(text: str, limit: int) -> str:
    return whole_sentences(re.sub(r"\s+", " ", text).strip(), limit)


# ---- deterministic path -------------------------------------------------------------------------
class RunbookExtractor:
    method = "runbook"

    def extract(self, doc: Document, chunks: list[Chunk]) -> list[IncidentMention]:
        parts: dict[str, list[str]] = {}
        for r in role_regions(doc):
            parts.setdefault(r.role, []).append((f"## {r.heading}\n" if r.role == "other" and r.heading else "")
                                                + doc.text[r.start:r.end])
        get = lambda role: "\n\n".join(parts.get(role, []))  # noqa: E731
        lead = plain_text(get("lead"))
        description = plain_text(get("description"))
        notes = " ".join(x for x in (lead if description else "", plain_text(get("notes")),
                                     plain_text(get("other"))) if x)
        description = description or lead
        impact = plain_text(get("impact"))
        if impact:
            description = f"{description} Impact: {impact}" if description else impact
        diagnosis = section_steps(get("diagnosis")).steps
        mitigation = section_steps(get("mitigation")).steps
        cases_md = get("cases")
        cases = list_items(cases_md) or [finish_step(s) for s in split_sentences(plain_text(cases_md))]
        return [IncidentMention(
            incident=doc.title, source=doc.source, order=0, method=self.method,
            failure_description=_cap(description, MAX_DESCRIPTION), diagnosis_steps=diagnosis,
            mitigation_steps=mitigation, typical_cases=cases, notes=_cap(notes, MAX_NOTES),
            chunk_ids=[c.id for c in chunks], tags=list(doc.tags), references=find_references(doc.body),
            primary=True,
        )]


# ---- sentence roles (prior + optional LLM) --------------------------------------------------------
LABELS = ("symptom", "check", "fix", "other")
_SYMPTOM = re.compile(r"\b(error|errors|fail\w*|down|unavailable|time[sd]? ?out|timeout|cannot|can't|unable|"
                      r"slow\w*|latency|full|crash\w*|5\d\d|lag\w*|stale|drop\w*|lost|unhealthy|flap\w*|"
                      r"refused|denied|expired?|exhaust\w*|saturat\w*|spike\w*|outage|degrad\w*|hang\w*|stuck|"
                      r"leak\w*|corrupt\w*|unreachable|broken|fires?|firing|alert)\b", re.I)
_CASE_CUE = re.compile(r"\b(for example|e\.g\.|typically|typical|usually|commonly|common cause|classic|"
                       r"happened|twice|once|this year|last time|in one case|often)\b", re.I)
_RUN_VERBS = {"run", "execute", "use", "try", "make", "ensure", "consider", "keep", "avoid", "prefer", "wait"}


def sentence_prior(sentence: str) -> dict[str, float]:
    """Lexical prior over LABELS (imperative verbs, symptom words, references)."""
    if is_reference(sentence):
        p = {"symptom": 0.05, "check": 0.05, "fix": 0.05, "other": 0.85}
    else:
        v = leading_verb(sentence)
        if v in _RUN_VERBS:
            p = {"symptom": 0.05, "check": 0.45, "fix": 0.4, "other": 0.1}
        elif v in FIX_VERBS and v not in CHECK_VERBS:
            p = {"symptom": 0.05, "check": 0.15, "fix": 0.7, "other": 0.1}
        elif v in CHECK_VERBS:
            p = {"symptom": 0.05, "check": 0.7, "fix": 0.15, "other": 0.1}
        elif is_action(sentence):
            p = {"symptom": 0.05, "check": 0.4, "fix": 0.45, "other": 0.1}
        elif _SYMPTOM.search(sentence):
            p = {"symptom": 0.6, "check": 0.05, "fix": 0.05, "other": 0.3}
        else:
            p = {"symptom": 0.2, "check": 0.1, "fix": 0.1, "other": 0.6}
    return p


_CLASSIFY_PROMPT = """Sentence: Users cannot resolve internal host names.
Type: symptom
Sentence: Check the CoreDNS pod logs for errors.
Type: check
Sentence: Restart the CoreDNS deployment.
Type: fix
Sentence: This alert was added in version 2.3.
Type: other
Sentence: Run df -h to see which filesystem is full.
Type: check
Sentence: Delete old log files under /var/log.
Type: fix
Sentence: The API server returns 500 errors for writes.
Type: symptom
Sentence: {sentence}
Type:"""

_NAME_PROMPT = """Text: Twice this year a firewall change blocked port 53 and lookups of internal names timed out.
Failure: DNS lookups timing out

Text: The replica fell hours behind after a bulk delete, so reports showed stale data.
Failure: Replica lag

Text: The nightly backup job failed with "No space left on device" because the NFS share was full.
Failure: Backup share full

Text: {text}
Failure:"""

_STOP = {"a", "an", "the", "of", "in", "on", "for", "to", "and", "or", "with", "by", "at", "from", "is", "are",
         "was", "be", "not", "no", "its", "it", "this", "that", "as", "into", "after", "before", "when", "due"}
FAILURE_WORDS = {"failure", "failures", "failed", "failing", "fail", "error", "errors", "outage", "issue",
                 "issues", "problem", "problems", "down", "full", "lag", "slow", "high", "low", "latency",
                 "degraded", "expired", "expiry", "timeout", "timeouts", "unavailable", "broken", "crash",
                 "incident", "loss", "exhaustion", "leak", "spike", "mismatch", "split", "brain", "hang"}
GENERIC_TITLE_WORDS = {"notes", "note", "wiki", "team", "page", "postmortem", "post-mortem", "guide", "handbook",
                       "faq", "overview", "readme", "runbook", "runbooks", "cheatsheet", "documentation",
                       "docs", "review", "summary", "misc", "living", "draft"}


def validate_name(raw: str, context: str, title: str = "") -> str | None:
    """The model's incident name if it is short and every content word is grounded in the text.

    `context` is the paragraph that was named (it must mention some failure); words may also be
    grounded in the document `title`.
    """
    line = raw.strip().splitlines()[0] if raw.strip() else ""
    line = re.split(r"[.(\[{<|]|\bText:", line)[0]
    name = re.sub(r"^[\s\"'*`:-]+|[\s\"'*`,;:!-]+$", "", line)
    if not name or name.lower() in {"none", "n/a", "unknown", "no failure", "nothing"}:
        return None
    if re.search(r"https?:|www\.|\\|//|@", name) or not 3 <= len(name) <= 80:
        return None
    words = re.findall(r"[A-Za-z][A-Za-z0-9+-]*|\d+", name)
    if not 1 <= len(words) <= 6 or sum(w.isdigit() for w in words) > 1 or name[0].isdigit():
        return None
    if not _SYMPTOM.search(context):
        return None  # a paragraph that mentions no failure does not name an incident
    ctx_tokens = set(re.findall(r"[a-z0-9]+", f"{context} {title}".lower()))

    def grounded(w: str) -> bool:  # the word, or a word sharing its stem (drops ~ dropping), is in the text
        w = w.lower()
        return w in ctx_tokens or (len(w) >= 5 and any(t.startswith(w[:4]) for t in ctx_tokens))

    content = [w for w in words if w.lower() not in _STOP]
    if any(not grounded(w) and w.lower() not in FAILURE_WORDS for w in content):
        return None
    if not any(grounded(w) and w.lower() not in FAILURE_WORDS for w in content):
        return None
    return name[0].upper() + name[1:]


def title_incident(doc: Document) -> str:
    """The document title as an incident name, without wiki words ("Load balancer notes (team wiki)")."""
    title = re.sub(r"\([^)]*\)", " ", doc.title)
    title = re.sub(r"^\s*(post-?mortem|incident review|runbook|notes?)\s*:\s*", "", title, flags=re.I)
    words = [w for w in title.split() if w.lower().strip(":,-") not in GENERIC_TITLE_WORDS]
    name = " ".join(words).strip(" :-,")
    return name or humanize(doc.path.stem)


@dataclass
class _Segment:
    chunk_index: int
    text: str  # cleaned text shown to the LLM
    sentences: list[str]
    name: str | None = None


def _segments(chunk_index: int, chunk: Chunk, max_segments: int) -> list[_Segment]:
    """Paragraphs of a chunk (consecutive list items and code fences join the paragraph before)."""
    segs: list[_Segment] = []
    for b in parse_blocks(chunk.text):
        if b.kind == "heading":
            continue
        if b.kind == "code":
            cmds = commands_from_code(b.text, b.lang)
            if cmds and segs:
                segs[-1].sentences.append(finish_step("Run: " + "; ".join(cmds)))
            continue
        text = clean_inline(b.text)
        if not text:
            continue
        sents = [text] if b.kind == "item" else split_sentences(text)
        if b.kind == "item" and segs and segs[-1].sentences and segs[-1].text.startswith("\u2022"):
            segs[-1].sentences += sents
            segs[-1].text += " " + text
            continue
        segs.append(_Segment(chunk_index, ("\u2022 " + text) if b.kind == "item" else text, sents))
    while len(segs) > max_segments:  # fold the shortest neighbours together
        i = min(range(len(segs) - 1), key=lambda k: len(segs[k].text) + len(segs[k + 1].text))
        segs[i].text += " " + segs[i + 1].text
        segs[i].sentences += segs[i + 1].sentences
        del segs[i + 1]
    return segs


class _SentenceExtractor:
    """Steps 1-2 over paragraphs; subclasses decide how names and sentence labels are obtained."""

    method = "heuristic"

    def __init__(self, max_segments: int = 6):
        self.max_segments = max_segments

    def name_segments(self, segments: list[_Segment], doc: Document) -> list[str | None]:
        return [None] * len(segments)

    def classify(self, sentences: list[str]) -> list[dict[str, float]]:
        return [sentence_prior(s) for s in sentences]

    def extract(self, doc: Document, chunks: list[Chunk]) -> list[IncidentMention]:
        segs: list[_Segment] = []
        for i, c in enumerate(chunks):
            segs.extend(_segments(i, c, self.max_segments))
        if not segs:
            return []
        fallback = title_incident(doc)
        for seg, name in zip(segs, self.name_segments(segs, doc)):
            seg.name = name
        # Paragraphs the model could not name continue the incident before them.
        current = fallback
        for seg in segs:
            if seg.name is None:
                seg.name = current
            current = seg.name
        # Runs of paragraphs naming the same incident inside one chunk form one mention.
        runs: list[list[_Segment]] = []
        for seg in segs:
            if runs and runs[-1][-1].chunk_index == seg.chunk_index and _same(runs[-1][-1].name, seg.name):
                runs[-1].append(seg)
            else:
                runs.append([seg])
        all_sents = [s for seg in segs for s in seg.sentences]
        labels = self.classify(all_sents)
        label_of = {}
        k = 0
        for seg in segs:
            for s in seg.sentences:
                label_of[(id(seg), s)] = labels[k]
                k += 1
        nodes: list[IncidentMention] = []
        prev_run: list[_Segment] | None = None
        for run in runs:
            labelled = [(s, label_of[(id(seg), s)]) for seg in run for s in seg.sentences]
            context: list[tuple[str, dict]] = []
            if prev_run is not None and prev_run[0].chunk_index == run[0].chunk_index - 1:
                # FlowXpert fills a node from the current and the previous chunk: the previous chunk's
                # last paragraphs describe the failure when this chunk only continues with steps.
                context = [(s, label_of[(id(seg), s)]) for seg in prev_run[-1:] for s in seg.sentences]
            nodes.append(self._fill(doc, run, labelled, context, len(nodes), chunks, fallback))
            prev_run = run
        return _fold_empty(nodes, fallback)

    def _fill(self, doc, run, labelled, context, order, chunks, fallback) -> IncidentMention:
        symptoms, checks, fixes, cases, notes = [], [], [], [], []
        for s, p in labelled:
            best = max(p, key=p.get)
            if best in ("symptom", "other") and _CASE_CUE.search(s) and _SYMPTOM.search(s):
                cases.append(finish_step(s))
            elif best == "symptom":
                symptoms.append(s)
            elif best == "check":
                checks.append(finish_step(s))
            elif best == "fix":
                fixes.append(finish_step(s))
            elif not is_reference(s):
                notes.append(s)
        if not symptoms:
            symptoms = [s for s, p in context if max(p, key=p.get) == "symptom"][:2]
        if not symptoms and labelled:
            symptoms = [labelled[0][0]]
        ids = sorted({run_seg.chunk_index for run_seg in run})
        text = " ".join(chunks[i].text for i in ids)
        name = run[0].name or fallback
        return IncidentMention(
            incident=name, source=doc.source, order=order, method=self.method,
            failure_description=_cap(" ".join(symptoms[:3]), MAX_DESCRIPTION), diagnosis_steps=_dedupe(checks),
            mitigation_steps=_dedupe(fixes), typical_cases=_dedupe(cases), notes=_cap(" ".join(notes), MAX_NOTES),
            chunk_ids=[chunks[i].id for i in ids], tags=list(doc.tags), references=find_references(text),
            primary=_same(name, fallback),
        )


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", humanize(name).lower()).strip()


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and _norm(a) == _norm(b)


def _dedupe(items: list[str]) -> list[str]:
    seen, out = set(), []
    for it in items:
        k = re.sub(r"\W+", " ", it.lower()).strip()
        if k and k not in seen:
            seen.add(k)
            out.append(it)
    return out


def _fold_empty(nodes: list[IncidentMention], fallback: str) -> list[IncidentMention]:
    """Named incidents without any step or case are folded into the document's own incident."""
    keep = [n for n in nodes if n.has_content() or n.primary]
    if not keep:
        keep = [nodes[0]]
        keep[0].incident, keep[0].primary = fallback, True
    host = next((n for n in keep if n.primary), keep[0])
    for n in nodes:
        if n in keep:
            continue
        if n.failure_description and n.failure_description not in host.failure_description:
            host.failure_description = _cap(host.failure_description + " " + n.failure_description,
                                            MAX_DESCRIPTION)
        host.notes = _cap((host.notes + " " + n.notes).strip(), MAX_NOTES)
        host.chunk_ids += [c for c in n.chunk_ids if c not in host.chunk_ids]
        host.references += [r for r in n.references if r not in host.references]
    for i, n in enumerate(keep):
        n.order = i
    return keep


class HeuristicExtractor(_SentenceExtractor):
    """Unstructured documents without an LLM: the title names the incident, a lexical prior fills it."""

    method = "heuristic"


class LLMExtractor(_SentenceExtractor):
    """Unstructured documents with a small LLM naming incidents and labelling sentences."""

    method = "llm"

    def __init__(self, engine: Engine, max_segments: int = 6, llm_weight: float = 0.5,
                 max_sentences: int = 200):
        super().__init__(max_segments)
        self.engine = engine
        self.llm_weight = llm_weight
        self.max_sentences = max_sentences

    def name_segments(self, segments: list[_Segment], doc: Document) -> list[str | None]:
        prompts = [_NAME_PROMPT.format(text=_cap(s.text, 400)) for s in segments]
        try:
            outs = self.engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0.0, stop=("\n",)))
        except Exception as exc:  # a broken engine must not break the build: fall back to titles
            log.warning("LLM naming failed for %s (%s); using the document title", doc.source, exc)
            return [None] * len(segments)
        names = []
        for seg, out in zip(segments, outs):
            raw = out.texts[0] if out.texts else ""
            names.append(validate_name(raw, seg.text, doc.title))
            log.debug("segment %r -> %r -> %r", seg.text[:60], raw, names[-1])
        return names

    def classify(self, sentences: list[str]) -> list[dict[str, float]]:
        priors = [sentence_prior(s) for s in sentences]
        todo = [i for i, s in enumerate(sentences) if not is_reference(s)][: self.max_sentences]
        if not todo:
            return priors
        prompts = [_CLASSIFY_PROMPT.format(sentence=_cap(sentences[i], 300)) for i in todo]
        try:
            dists = self.engine.label_probs(prompts, [" " + lab for lab in LABELS])
        except Exception as exc:
            log.warning("LLM sentence labelling failed (%s); using the lexical prior", exc)
            return priors
        w = self.llm_weight
        for i, d in zip(todo, dists):
            llm = {lab: float(d.get(" " + lab, 0.0)) for lab in LABELS}
            priors[i] = {lab: w * llm[lab] + (1 - w) * priors[i][lab] for lab in LABELS}
        return priors


def extract_document(doc: Document, chunks: list[Chunk], llm: Engine | None = None) -> tuple[list[IncidentMention], str]:
    """Raw incident nodes of one document and the method used (runbook, llm or heuristic)."""
    if is_structured(doc):
        ex = RunbookExtractor()
    elif llm is not None:
        ex = LLMExtractor(llm)
    else:
        ex = HeuristicExtractor()
    return ex.extract(doc, chunks), ex.method


def planned_method(doc: Document, llm_available: bool) -> str:
    if is_structured(doc):
        return "runbook"
    return "llm" if llm_available else "heuristic"
