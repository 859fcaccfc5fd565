import pytest

from core.paths import shared_data_dir
from leaderboard.workflow_cases import WorkflowCase, load_runbook_cases

RUNBOOKS = shared_data_dir() / "prometheus-operator-runbooks"


def test_case_from_a_small_runbook(tmp_path):
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "DiskAlert.md").write_text("""---
title: Disk Alert
---

# DiskAlert

## Meaning

The disk is almost full.

<details>
<summary>Full context</summary>
Long background that a ticket would not contain.
</details>

## Diagnosis

Check the usage with:

```shell
$ df -h
Filesystem  Size
```

Find the biggest directories.

## Mitigation

- Delete old logs
- Extend the volume
""")
    (tmp_path / "node" / "Tiny.md").write_text("# Tiny\n\n## Meaning\nx\n\n## Diagnosis\nCheck it.\n")
    cases = load_runbook_cases(tmp_path)
    assert cases == [WorkflowCase(id="node/DiskAlert", query="DiskAlert (Disk Alert): The disk is almost full.",
                                  reference_steps=["Check the usage with: df -h", "Find the biggest directories.",
                                                   "Delete old logs", "Extend the volume"],
                                  source="node/DiskAlert.md")]
    assert len(load_runbook_cases(tmp_path, min_steps=1)) == 2


@pytest.mark.shared_data
@pytest.mark.skipif(not RUNBOOKS.is_dir(), reason=f"public runbooks not found at {RUNBOOKS} (../shared/data)")
def test_prometheus_runbooks_yield_cases():
    cases = load_runbook_cases(RUNBOOKS)
    assert 70 <= len(cases) <= 108  # 108 runbooks (117 files minus 9 Hugo _index pages)
    by = {c.id.rsplit("/", 1)[-1]: c for c in cases}
    crash = by["KubePodCrashLooping"]
    assert crash.query.startswith("KubePodCrashLooping (Kube Pod Crash Looping): Pod is in CrashLoop")
    assert crash.reference_steps[0] == "Check template via kubectl -n $NAMESPACE get pod $POD."
    assert all(len(c.reference_steps) >= 3 for c in cases)
    assert len({c.id for c in cases}) == len(cases)
    assert "PrometheusOutOfOrderTimestamps" not in by  # no Diagnosis/Mitigation at all
