#!/usr/bin/env bash
# The full suite on both cores: the tests on the session service (marker `service_half`, set in
# tests/conftest.py) in one pytest process, everything else in another, side by side. The service starts once;
# while its tests wait on tickets, the other process's model tests (training, engines) use the second core.
# The service half writes to runs/test-service.log, printed when it ends; the other half streams here.
# Fails if either half fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p runs
log=runs/test-service.log
started=$(date +%s)
"$PY" -m pytest -m "not vllm and service_half" --durations=10 "$@" >"$log" 2>&1 &
service_pid=$!
trap 'kill $service_pid 2>/dev/null' INT TERM
echo "== tests on the session service: pid $service_pid, log $log"
echo "== the rest:"
"$PY" -m pytest -m "not vllm and not service_half" --durations=15 "$@" 2>&1 | tee runs/test-rest.log
rest_rc=${PIPESTATUS[0]}
echo "== the rest: exit $rest_rc; waiting for the session-service half ..."
wait $service_pid
service_rc=$?
echo "== tests on the session service (exit $service_rc):"
cat "$log"
grep -hE "^(FAILED|ERROR) " runs/test-rest.log "$log" | sed 's/^/== /'
echo "== whole suite: $(( $(date +%s) - started )) s wall; exit codes: rest $rest_rc, session service $service_rc"
[ "$rest_rc" -eq 0 ] && [ "$service_rc" -eq 0 ]
