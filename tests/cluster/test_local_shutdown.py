"""`flowrouter shutdown` leaves nothing of the server's process group behind."""

import json
import os
import subprocess
import sys
import threading
import time

from cluster import local
from core.config import load_config

# A stand-in for the server: leads its own process group (as start_background starts it), spawns a
# child that outlives it and ignores SIGTERM (as Ray's agents do after ray.shutdown()), and exits on SIGTERM.
SERVER = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print(child.pid, flush=True)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours counts as gone
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"


def test_shutdown_stops_the_server_and_its_stragglers(tmp_path):
    cfg = load_config(None)
    cfg.serve.state_dir = str(tmp_path)
    cfg.serve.port = 18999
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    child = int(proc.stdout.readline())
    local.pid_file(cfg).write_text(json.dumps({"pid": proc.pid, "started": local.process_start_ticks(proc.pid),
                                               "url": "http://127.0.0.1:18999"}))
    # Reap the stand-in as soon as it exits (the real server is not our child, so never a zombie).
    threading.Thread(target=proc.wait, daemon=True).start()
    try:
        t0 = time.time()
        assert local.stop_background(cfg, timeout_s=20)
        assert time.time() - t0 < 15, "the server did not stop on SIGTERM"
        deadline = time.time() + 10
        while _alive(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "a process of the server's group outlived shutdown"
        assert not local.pid_file(cfg).exists()
    finally:
        for pid in (proc.pid, child):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def test_shutdown_without_a_recorded_server_says_so(tmp_path):
    cfg = load_config(None)
    cfg.serve.state_dir = str(tmp_path)
    assert local.stop_background(cfg) is False


def test_a_stale_record_whose_pid_was_reused_is_not_signalled(tmp_path):
    cfg = load_config(None)
    cfg.serve.state_dir = str(tmp_path)
    cfg.serve.port = 18998
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        # the recorded server started at another time than the process that now holds its pid
        started = local.process_start_ticks(bystander.pid) - 1
        local.pid_file(cfg).write_text(json.dumps({"pid": bystander.pid, "started": started}))
        assert local.stop_background(cfg) is False
        assert bystander.poll() is None, "a process that is not the server was signalled"
        assert not local.pid_file(cfg).exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_record_without_a_start_time_is_trusted_on_its_pid(tmp_path):
    """A pid file written by an older server (no start time) still stops that server."""
    cfg = load_config(None)
    cfg.serve.state_dir = str(tmp_path)
    cfg.serve.port = 18997
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        local.pid_file(cfg).write_text(json.dumps({"pid": server.pid}))
        assert local.stop_background(cfg, timeout_s=10) is True
        assert server.wait(timeout=10) is not None
    finally:
        server.kill()
        server.wait()
