"""Fixtures for knowledge-base tests: small operation documents, a tmp folder of them, one MiniLM.

Tests run with --import-mode=importlib, so they reach the documents through the `kb_docs` fixture
instead of importing a helper module.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

DNS = """# DNS resolution failures

## Meaning
Clients cannot resolve host names: lookups return SERVFAIL or NXDOMAIN, or time out.

## Impact
Anything that connects by name fails.

## Diagnosis
1. Reproduce with `dig name.example.com` from an affected host.
2. Check which resolvers the host uses: `cat /etc/resolv.conf`.
3. Query each resolver directly with `dig @resolver name.example.com`.

## Mitigation
1. Remove the failing resolver from the resolver list.
2. Restart the resolver service and flush its cache.

## Typical cases
- Build agents get SERVFAIL for internal names -> firewall blocked TCP 53 -> restore the rule.

## Notes
See also: storage/disk-full.md for resolvers that stop when their disk is full.
"""

DISK = """# Filesystem full

## Meaning
A filesystem is at or near 100% usage; writes fail with "No space left on device".

## Diagnosis
1. Run `df -h` to find the full filesystem.
2. Find the largest directories with `du -xh / | sort -h | tail`.
3. Check for deleted files still held open with `lsof +L1`.

## Mitigation
1. Delete or compress old log files.
2. Extend the volume and grow the filesystem.
"""

CRASH = """# Pod in CrashLoopBackOff

## Meaning
A container starts, exits, and Kubernetes restarts it with growing back-off.

## Diagnosis
- Check the pod events with `kubectl describe pod`.
- Read the previous container logs with `kubectl logs --previous`.

## Mitigation
- Roll back the deployment to the last working version.
- Raise the memory limit when the container is OOMKilled.
"""

VPN_NOTES = """# VPN notes

When the VPN gateway drops tunnels, first check the IKE logs on the gateway.
If the tunnel keeps flapping, restart the ipsec service.
"""


def write_docs(root: Path, docs: dict[str, str]) -> Path:
    for rel, text in docs.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def kb_docs():
    return SimpleNamespace(DNS=DNS, DISK=DISK, CRASH=CRASH, VPN_NOTES=VPN_NOTES, write=write_docs)


@pytest.fixture
def docs_dir(tmp_path) -> Path:
    return write_docs(tmp_path / "docs", {"network/dns-resolution-failures.md": DNS, "storage/disk-full.md": DISK,
                                          "kubernetes/pod-crashloop.md": CRASH})


@pytest.fixture(scope="session")
def embedder():
    import torch

    torch.set_num_threads(1)
    from core.embeddings import shared_embedder

    return shared_embedder()
