"""`ecgcad serve` starts, answers its health endpoints, logs one line per component and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_answers_health_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    cfg = tmp_path / "ecgcad.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n[api]\nport = {port}\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecgcad", "serve", "--config", str(cfg), "--role", "api,worker,scheduler"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200 and body["status"] == "ok"
        status, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and body["checks"]["database"] is True and body["checks"]["worker"] is True
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert f"started api 127.0.0.1:{port}" in out
    assert "started worker" in out and "started scheduler" in out
    assert "stopped worker" in out and "stopped api" in out
    assert "Traceback" not in out
