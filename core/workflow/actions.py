"""Which steps observe and which change: the verbs operation documents start their steps with.

One definition for the knowledge base (sorting runbook sentences into checks and fixes) and for
the schema's action class of steps that arrive as plain text.
"""

from __future__ import annotations

import re

CHECK_VERBS = {
    "check", "verify", "inspect", "look", "review", "query", "investigate", "examine", "confirm", "find",
    "identify", "determine", "compare", "search", "list", "describe", "get", "watch", "monitor", "study",
    "analyse", "analyze", "debug", "test", "validate", "reproduce", "follow", "grep", "tail", "ping", "dig",
    "nslookup", "curl", "traceroute", "measure", "collect", "gather", "capture", "dump", "profile", "read",
    "consult", "open", "login", "ssh", "connect", "exec", "trace", "observe", "view",
    "show", "locate", "track", "correlate", "audit", "ask", "talk", "contact",
}
FIX_VERBS = {
    "restart", "reboot", "delete", "remove", "increase", "decrease", "raise", "lower", "scale", "add",
    "expand", "resize", "rollback", "roll", "revert", "upgrade", "update", "fix", "edit", "change", "set",
    "configure", "enable", "disable", "cordon", "drain", "migrate", "move", "clean", "purge",
    "defragment", "defrag", "compact", "restore", "recreate", "reinstall", "replace", "escalate", "stop",
    "start", "apply", "create", "deploy", "redeploy", "patch", "rotate", "renew", "reissue", "provision",
    "allocate", "assign", "silence", "route", "adjust", "tune", "reduce", "limit", "kill", "flush", "clear",
    "reset", "refresh", "reload", "trigger", "retry", "rerun", "rebuild", "resync", "rebalance", "reschedule",
    "evict", "uncordon", "backup", "snapshot", "export", "unmount", "mount", "fsck", "unblock",
    "unlock", "disconnect", "isolate", "failover", "promote", "demote", "split", "cancel", "drop",
    "bypass", "mitigate", "quarantine", "revoke", "reimage", "swap", "extend", "shrink", "archive", "prune",
    "truncate", "rename", "pin", "unpin", "pause", "resume", "suspend", "terminate", "shutdown", "repair",
    "recover", "re-run", "re-enable", "install", "uninstall", "upload", "download", "notify", "inform",
    "document", "record", "schedule", "plan", "wait", "try", "use", "run", "execute", "make", "ensure",
    "consider", "keep", "avoid", "prefer", "define", "tell", "call",
}
ACTION_VERBS = CHECK_VERBS | FIX_VERBS
# Fix verbs that only look or tell: a step starting with them changes nothing in the system.
_NON_CHANGING = {"wait", "try", "use", "run", "execute", "make", "ensure", "consider", "keep", "avoid", "prefer",
                 "define", "tell", "call", "notify", "inform", "document", "record", "plan", "schedule",
                 "escalate", "export", "backup", "snapshot", "download"}
CHANGE_VERBS = (FIX_VERBS - CHECK_VERBS) - _NON_CHANGING


def first_word(text: str) -> str:
    m = re.match(r"\W*([A-Za-z][A-Za-z-]*)", text)
    return m.group(1).lower() if m else ""


_MUTATING_COMMAND = re.compile(
    r"\b(?:kubectl|oc)\s+(?:-n\s+\S+\s+)?(?:delete|apply|patch|scale|drain|cordon|uncordon|edit|replace|"
    r"annotate|label|taint|rollout\s+(?:restart|undo))\b|\bsystemctl\s+(?:restart|stop|start|reload)\b|"
    r"\brm\s+-|\bkill(?:all)?\s|\bhelm\s+(?:upgrade|rollback|uninstall)\b")


def is_change(text: str) -> bool:
    """A step that alters state (restart, delete, scale, a mutating command), as opposed to reading it."""
    return first_word(text) in CHANGE_VERBS or bool(_MUTATING_COMMAND.search(text))
