"""Markdown reading shared by the knowledge base and the workflow-case importer.

Operation documents are loosely written Markdown: front matter, headings, numbered or bulleted
steps, prose with commands in code fences, HTML `<details>` blocks, Hugo `{{< ref >}}` links.
This module turns them into sections (for chunking), blocks (for step extraction), steps, and
references to other documents (for linking incidents).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from core.workflow.actions import ACTION_VERBS

# ---- front matter and sections ----------------------------------------------------------------
_FRONT = re.compile(r"\A(?:\ufeff)?---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)", re.S)
_FENCE = re.compile(r"^\s{0,3}(```+|~~~+)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")


def front_matter(text: str) -> tuple[dict, int]:
    """(metadata, offset where the body starts). Unreadable front matter is treated as empty."""
    m = _FRONT.match(text)
    if not m:
        return {}, 0
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        meta = {}
    return (meta if isinstance(meta, dict) else {}), m.end()


@dataclass
class Section:
    """Text under one heading (up to the next heading of any level)."""

    heading_path: list[str]  # titles from the top-level heading down to this one
    level: int  # 0 for text before the first heading
    start: int  # offset of the body (after the heading line) in the document
    end: int


def split_sections(text: str, start: int = 0) -> list[Section]:
    """Sections of `text[start:]`, headings inside code fences ignored; offsets into `text`."""
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    cur = Section([], 0, start, len(text))
    fence: str | None = None
    pos = start
    for line in text[start:].splitlines(keepends=True):
        line_end = pos + len(line)
        stripped = line.rstrip("\n")
        f = _FENCE.match(stripped)
        if f:
            mark = f.group(1)
            if fence is None:
                fence = mark[0] * 3
            elif mark.startswith(fence):
                fence = None
        elif fence is None:
            h = _HEADING.match(stripped)
            if h:
                cur.end = pos
                sections.append(cur)
                level, title = len(h.group(1)), clean_inline(h.group(2))
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, title))
                cur = Section([t for _, t in stack], level, line_end, len(text))
        pos = line_end
    cur.end = len(text)
    sections.append(cur)
    return sections


def first_heading(text: str, start: int = 0) -> str | None:
    for s in split_sections(text, start):
        if s.level == 1 and s.heading_path:
            return s.heading_path[-1]
    for s in split_sections(text, start):
        if s.heading_path:
            return s.heading_path[0]
    return None


# ---- inline cleaning ---------------------------------------------------------------------------
_HUGO_REF = re.compile(r"\{\{<\s*(?:rel)?ref\s+\"?([^\"}>]+?)\"?\s*>\}\}")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\((?:[^()]|\([^)]*\))*\)")
_REFLINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_SUMMARY = re.compile(r"<summary>.*?</summary>", re.S | re.I)
_HTML_TAG = re.compile(r"</?(?:details|summary|br|p|div|span|a|img|b|i|u|em|strong|code|pre|sub|sup|kbd|"
                       r"small|hr|table|tr|td|th|ul|ol|li|center)\b[^>]*>", re.I)
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")


def _ref_name(target: str) -> str:
    stem = target.strip().rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"\.(md|markdown|txt)$", "", stem)


def clean_inline(text: str) -> str:
    """Plain text: links reduced to their text, HTML and emphasis removed, backticks dropped."""
    text = _HUGO_REF.sub(lambda m: _ref_name(m.group(1)), text)
    text = _IMAGE.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _REFLINK.sub(r"\1", text)
    text = _SUMMARY.sub(" ", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _HTML_TAG.sub(" ", text)
    text = re.sub(r"\*\*|__", "", text)
    text = re.sub(r"(?<![\w*])\*(\S(?:[^*]*\S)?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"(?<![\w_])_(\S(?:[^_]*\S)?)_(?![\w_])", r"\1", text)
    text = text.replace("`", "")
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


# ---- blocks ------------------------------------------------------------------------------------
_ITEM = re.compile(r"^(\s*)([-*+•]|\d{1,3}[.)])\s+(.*)$")
_HTML_LINE = re.compile(r"^\s*</?(?:details|summary|div|p|br|hr|center|table)\b[^>]*>.*$", re.I)


@dataclass
class Block:
    kind: str  # para | item | code | heading
    text: str
    indent: int = 0
    lang: str = ""
    level: int = 0


def parse_blocks(md: str) -> list[Block]:
    """Paragraphs, list items (with indent), fenced code and headings, in order."""
    blocks: list[Block] = []
    para: list[str] = []
    item: Block | None = None

    def flush():
        nonlocal para, item
        if para:
            blocks.append(Block("para", "\n".join(para)))
            para = []
        if item is not None:
            blocks.append(item)
            item = None

    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        f = _FENCE.match(line)
        if f:
            flush()
            mark = f.group(1)[0] * 3
            lang = line.strip()[3:].strip().strip("`~").split(" ")[0].lower()
            body = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(mark):
                body.append(lines[i])
                i += 1
            blocks.append(Block("code", "\n".join(body), lang=lang))
            i += 1
            continue
        if not line.strip():
            flush()
            i += 1
            continue
        h = _HEADING.match(line)
        if h:
            flush()
            blocks.append(Block("heading", clean_inline(h.group(2)), level=len(h.group(1))))
            i += 1
            continue
        if _HTML_LINE.match(line):
            # <details>/<summary> wrappers: keep the text between them as ordinary paragraphs.
            flush()
            rest = _SUMMARY.sub("", line)
            rest = _HTML_TAG.sub(" ", rest).strip()
            if rest:
                para.append(rest)
            i += 1
            continue
        m = _ITEM.match(line)
        if m and not re.match(r"^\s*[-*_]{3,}\s*$", line):
            flush()
            item = Block("item", m.group(3), indent=len(m.group(1).expandtabs(4)))
            i += 1
            continue
        if re.match(r"^\s*[-*_]{3,}\s*$", line):  # thematic break
            flush()
            i += 1
            continue
        if item is not None:
            item.text += " " + line.strip()
        else:
            para.append(line)
        i += 1
    flush()
    return blocks


# ---- sentences ---------------------------------------------------------------------------------
_ABBREV = re.compile(r"\b(e\.g|i\.e|etc|vs|approx|cf|incl|no|fig|min|max|sec)\.", re.I)
_SENT_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9`\"'(\[$/])")


def split_sentences(text: str) -> list[str]:
    protected = _ABBREV.sub(lambda m: m.group(0).replace(".", "\u2024"), text)
    protected = re.sub(r"(\d)\.(\d)", "\\1\u2024\\2", protected)
    parts = _SENT_SPLIT.split(re.sub(r"\s+", " ", protected).strip())
    return [p.replace("\u2024", ".").strip() for p in parts if p.strip()]


# ---- what counts as an action --------------------------------------------------------------------

_LEADERS = {"then", "also", "first", "next", "finally", "please", "now", "afterwards", "optionally", "and", "either",
            "or", "simply", "just", "always", "never", "immediately", "quickly", "manually", "carefully"}
_MODAL = re.compile(r"\b(?:is|are) to (?:" + "|".join(sorted(ACTION_VERBS)) + r")\b|"
                    r"\b(you|we|operators?|one)\s+(should|can|could|may|might|must|need to|have to|"
                    r"will need to|want to|ought to)\b|\bmake sure\b|\bensure\b|\btry to\b|\bconsider\b|"
                    r"\bit is (?:recommended|advisable|best) to\b|\bis (?:the )?(?:fastest|easiest|best|"
                    r"cheapest|recommended) (?:way|solution|option)\b", re.I)
_CONDITIONAL = re.compile(r"^(if|when|whenever|in case|once|after|before|unless|for)\b", re.I)
_REFERENCE = re.compile(r"^(see|more information|more info|further info|learn more|refer to|read more|"
                        r"for more|details|documentation|reference|source)\b", re.I)


def _verb_form(word: str) -> str | None:
    w = word.lower().strip("`'\"(),.:;")
    for cand in (w, w[:-1] if w.endswith("s") else "", w[:-2] if w.endswith("ed") else "",
                 w[:-1] if w.endswith("ed") else "", w[:-3] if w.endswith("ing") else "",
                 w[:-3] + "e" if w.endswith("ing") else ""):
        if cand and cand in ACTION_VERBS:
            return cand
    return None


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z0-9_'-]*", text)


def leading_verb(sentence: str) -> str | None:
    """The imperative (or gerund) verb a sentence starts with, if any."""
    words = _words(sentence)
    while words and words[0].lower() in _LEADERS:
        words = words[1:]
    if not words:
        return None
    w = words[0].lower()
    if w in ACTION_VERBS:
        return w
    if w.endswith("ing"):
        return _verb_form(w)
    return None


def is_reference(sentence: str) -> bool:
    s = sentence.strip()
    return bool(_REFERENCE.match(s)) or bool(re.fullmatch(r"[\W\d]*(https?://\S+)?[\W\d]*", s))


def _passive_action(sentence: str) -> bool:
    """ "... can be used to check ...", "the instance should be terminated" """
    for m in _PASSIVE.finditer(sentence):
        if _verb_form(m.group(1)) or m.group(1).lower() in ("done", "taken", "found", "seen", "run"):
            return True
    return False


_PASSIVE = re.compile(r"\b(?:can|could|should|must|may|might|needs? to|has to|have to) be (\w+)", re.I)


def is_action(sentence: str) -> bool:
    """A sentence telling the operator to do or check something (imperative, modal or conditional)."""
    s = sentence.strip()
    if not s or is_reference(s):
        return False
    if s.endswith("?") and len(_words(s)) >= 3:
        return True  # a diagnostic question ("Is the replica replaying but slowly?")
    if leading_verb(s):
        return True
    if _MODAL.search(s) or _passive_action(s):
        return True
    if _CONDITIONAL.match(s):
        tail = re.split(r",|\bthen\b", s, maxsplit=1)
        if len(tail) == 2 and (leading_verb(tail[1]) or any(_verb_form(w) for w in _words(tail[1])[:3])):
            return True
    return False


# ---- steps from a section -------------------------------------------------------------------------
_CONFIG_LANGS = {"yaml", "yml", "json", "toml", "ini", "xml", "text", "txt", "log", "diff", "output",
                 "csv", "html", "properties", "conf", "hcl"}
_TRIVIAL_CMDS = {"exit", "logout", "clear", "cd", "cd ..", "sudo -i", "su -"}


def finish_step(text: str) -> str:
    """A step as one clean line, whole (long steps are summarised later, never cut here)."""
    text = re.sub(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+", "", text)
    return re.sub(r"\s+", " ", text).strip(" -;,")


def whole_sentences(text: str, limit: int) -> str:
    """As many whole sentences of `text` as fit in `limit` characters (at least the first one)."""
    out = ""
    for s in split_sentences(text):
        if out and len(out) + 1 + len(s) > limit:
            break
        out = f"{out} {s}".strip()
    return out


def commands_from_code(code: str, lang: str = "") -> list[str]:
    """Commands in a code fence: `$ ` lines when the block mixes commands and output, else every line."""
    if lang in _CONFIG_LANGS:
        return []
    raw = code.splitlines()
    joined: list[str] = []
    buf = ""
    for line in raw:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1].strip() + " "
            continue
        joined.append((buf + line.strip()).strip())
        buf = ""
    if buf:
        joined.append(buf.strip())
    prompted = [ln for ln in joined if re.match(r"^(\$|#|>|PS>)\s+\S", ln) and not ln.startswith("# ")]
    dollar = [ln for ln in joined if ln.startswith("$ ")]
    if dollar:
        cmds = [ln[2:].strip() for ln in dollar]
    elif prompted and lang in ("console", "shell-session"):
        cmds = [re.sub(r"^(\$|>|PS>)\s+", "", ln) for ln in prompted]
    else:
        cmds = [ln for ln in joined if ln and not ln.startswith(("#", "//", "--"))]
    if lang in ("promql", "sql", "logql"):
        cmds = [" ".join(cmds)] if cmds else []
    out = []
    for c in cmds:
        c = re.sub(r"\s+", " ", c).strip()
        if not c or c.lower() in _TRIVIAL_CMDS or re.search(r"\bTODO\b", c):
            continue
        out.append(c[:200])
    return out[:3]


_LINK_ONLY = re.compile(r"^\s*(?:" + _LINK.pattern + r"|<?https?://\S+>?)\s*$")
_INTRODUCES = re.compile(r"\bthe following\b|\b(?:by )?running\s*\.?$|\bwith\s*\.?$|\brun\s*\.?$", re.I)


@dataclass
class SectionSteps:
    steps: list[str] = field(default_factory=list)
    prose: list[str] = field(default_factory=list)  # non-action sentences (explanations)


def section_steps(md: str) -> SectionSteps:
    """Ordered, cleaned steps from a Diagnosis/Mitigation-like section.

    List items are steps (short nested items fold into their parent); prose is split into
    sentences and the actionable ones kept; a code fence becomes one step, attached to the
    sentence introducing it ("... by running:") when there is one. Pure references ("See ...",
    bare links) and TODOs are dropped.
    """
    out = SectionSteps()
    blocks = parse_blocks(md)
    base_indent: int | None = None
    lead: str | None = None  # last step when it ends with ':' (waits for its code or list)
    lead_is_step = False
    folding = False  # nested items currently folding into their parent ("such as:" lists)
    for b in blocks:
        if b.kind == "heading":
            lead, base_indent, folding = None, None, False
            continue
        if b.kind == "code":
            cmds = commands_from_code(b.text, b.lang)
            if not cmds:
                continue
            body = "; ".join(cmds)
            if lead is not None:
                sep = " " if lead.endswith(":") else ": "
                merged = finish_step(f"{lead.rstrip('.')}{sep}{body}")
                if lead_is_step and out.steps and out.steps[-1] == finish_step(lead):
                    out.steps[-1] = merged
                else:
                    out.steps.append(merged)
            else:
                verb = "Query" if b.lang in ("promql", "sql", "logql") else "Run"
                out.steps.append(finish_step(f"{verb}: {body}"))
            lead = None
            continue
        text = clean_inline(b.text)
        if not text or re.search(r"^\s*TODO\b", text):
            continue
        if b.kind == "item":
            if (is_reference(text) and len(_words(text)) <= 6) or _LINK_ONLY.match(b.text):
                continue
            if base_indent is None or b.indent < base_indent:
                base_indent = b.indent
            nested = b.indent > base_indent
            short = len(_words(text)) < 3
            if short and lead is not None and not lead_is_step:
                out.prose[-1] = f"{out.prose[-1]} {text}" if out.prose else text
                continue
            if out.steps and ((nested and (short or out.steps[-1].endswith(":") or folding))
                              or (short and (lead_is_step or folding))):
                parent = out.steps[-1]
                sep = " " if parent.endswith(":") else ("; " if not parent.endswith((".", "?", "!")) else " ")
                out.steps[-1] = finish_step(parent + sep + text)
                folding = True
                lead, lead_is_step = None, False  # the introduced list has consumed the lead
                continue
            folding = False
            out.steps.append(finish_step(text))
            lead = out.steps[-1] if text.endswith(":") else None
            lead_is_step = lead is not None
            continue
        # paragraph
        base_indent = None
        lead = None
        folding = False
        for sent in split_sentences(text):
            if re.search(r"^\s*TODO\b", sent) or len(_words(sent)) < 2:
                continue
            introduces = sent.endswith(":") or bool(_INTRODUCES.search(sent))
            if is_action(sent):
                out.steps.append(finish_step(sent))
                lead, lead_is_step = (sent, True) if introduces else (None, False)
            elif is_reference(sent):
                lead = None
            else:
                out.prose.append(sent)
                lead, lead_is_step = (sent, False) if introduces else (None, False)
    # de-duplicate, keep order; a lead whose code never came ends without its colon
    seen: set[str] = set()
    steps = []
    for s in out.steps:
        s = s.rstrip(":").rstrip()
        key = re.sub(r"\W+", " ", s.lower()).strip()
        if len(key) >= 4 and key not in seen:
            seen.add(key)
            steps.append(s)
    out.steps = steps
    return out


def list_items(md: str) -> list[str]:
    """Top-level list items of a section (nested items folded in), cleaned."""
    items: list[str] = []
    base: int | None = None
    for b in parse_blocks(md):
        if b.kind != "item":
            continue
        text = clean_inline(b.text)
        if not text:
            continue
        if base is None:
            base = b.indent
        if b.indent > base and items:
            items[-1] = finish_step(items[-1] + "; " + text)
        else:
            items.append(finish_step(text))
    return items


def plain_text(md: str) -> str:
    """The section as plain prose (code fences dropped), for descriptions and notes."""
    parts = []
    for b in parse_blocks(md):
        if b.kind in ("para", "item"):
            t = clean_inline(b.text)
            if t:
                parts.append(t)
    return " ".join(parts).strip()


# ---- references to other documents -------------------------------------------------------------
_MD_TARGET = re.compile(r"\]\(([^)\s#]+\.(?:md|markdown|txt))(?:#[^)]*)?\)", re.I)
_BARE_PATH = re.compile(r"(?<![\w/.(\"])((?:\.{1,2}/)?(?:[\w.-]+/)*[\w.-]+\.(?:md|markdown|txt))\b", re.I)


def find_references(text: str) -> list[str]:
    """Paths of other documents a text points at: Markdown links, Hugo refs, `See also: a/b.md`."""
    refs: list[str] = []
    for m in _HUGO_REF.finditer(text):
        refs.append(m.group(1).strip())
    for m in _MD_TARGET.finditer(text):
        if not re.match(r"^[a-z]+://", m.group(1)):
            refs.append(m.group(1))
    stripped = _MD_TARGET.sub("]", _HUGO_REF.sub(" ", text))
    stripped = re.sub(r"https?://\S+", " ", stripped)
    for m in _BARE_PATH.finditer(stripped):
        refs.append(m.group(1))
    out: list[str] = []
    for r in refs:
        r = r.strip().strip("\"'")
        if r and r not in out:
            out.append(r)
    return out


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def humanize(name: str) -> str:
    """`KubePodCrashLooping` -> `Kube Pod Crash Looping`; `disk-full` -> `disk full`."""
    name = re.sub(r"\.(md|markdown|txt)$", "", name.strip())
    name = re.sub(r"[_\-]+", " ", name)
    return re.sub(r"\s+", " ", _CAMEL.sub(" ", name)).strip()
