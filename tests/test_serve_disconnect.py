"""Issue 32, item 14: a client that hangs up mid-body costs the operator at most one log line, no traceback."""

from __future__ import annotations

import logging
import socket
import time

from tests.test_serve import _start

CLIENTS = 5


def _hang_up_mid_body(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                  "Content-Length: 4096\r\n\r\n{\"model\": \"edge-agent\", ".encode())
        time.sleep(0.2)  # the server is inside read_json, waiting for the rest


def test_clients_that_hang_up_mid_body_leave_no_traceback(caplog, capfd, tmp_path):
    import store
    from edge_agent.agent import Settings
    from edge_agent.serve import ServeOptions, create_app

    options = ServeOptions(default_policy="local-only", resolve_policy=lambda spec: spec, settings=Settings(),
                           open_db=lambda: store.open_db(str(tmp_path / "serve.db")))
    app = create_app(lambda policy: None, options)  # no request ever gets as far as the model
    caplog.set_level(logging.INFO)
    server, thread, base = _start(app)
    port = int(base.rsplit(":", 1)[1].split("/")[0])
    try:
        for path in ["/v1/chat/completions"] * CLIENTS + ["/app/api/sessions/x/resume"]:
            _hang_up_mid_body(port, path)
        time.sleep(1.0)
    finally:
        server.should_exit = True
        thread.join(15)
    console = capfd.readouterr().err  # uvicorn's loggers write to stderr and do not propagate to caplog
    assert "Traceback" not in console and "Exception in ASGI application" not in console, console[-3000:]
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    ours = [r.getMessage() for r in caplog.records if "hung up" in r.getMessage()]
    assert len(ours) <= CLIENTS + 1 and all("\n" not in m for m in ours), ours
