"""A small driver for Debian's headless Chromium over the DevTools protocol, on the standard library alone.

``--remote-debugging-pipe`` makes Chromium read commands from its fd 3 and write answers and events to
its fd 4, each one JSON message ended by a NUL byte: no websocket library, no driver package. The tests
of the app page (tests/test_app_page.py) type, press keys, click and read the DOM through it, the way a
person would, and see every request the page makes (the Network domain).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--remote-debugging-pipe", "--window-size=1200,860"]
KEYS = {"Enter": ("Enter", 13, "\r"), "Escape": ("Escape", 27, ""), "Tab": ("Tab", 9, "")}


class CdpError(Exception):
    """A command the browser answered with an error, or no answer in time."""


class Browser:
    """One headless Chromium; ``page()`` attaches to its tab. Close it (or use ``with``) to end the process."""

    def __init__(self, *args: str, timeout: float = 30) -> None:
        self.timeout = timeout
        self.user_dir = tempfile.TemporaryDirectory()
        to_child, self._out = os.pipe()  # we write commands, the browser reads them on its fd 3
        self._in, from_child = os.pipe()  # the browser writes on its fd 4, we read

        def fds() -> None:  # in the child, before exec: the two pipe ends at the numbers Chromium expects
            read_end, write_end = os.dup(to_child), os.dup(from_child)  # neither is 3 or 4 now
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.proc = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={self.user_dir.name}", *args,
                                      "about:blank"], preexec_fn=fds, pass_fds=(3, 4),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._next = 0
        self._lock = threading.Lock()
        self._answers: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                part = os.read(self._in, 1 << 16)
            except OSError:
                part = b""
            if not part:
                with self._cond:
                    self._cond.notify_all()
                return
            buf += part
            *messages, buf = buf.split(b"\0")
            with self._cond:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._answers[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._cond.notify_all()

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        with self._lock:
            self._next += 1
            n = self._next
            msg: dict[str, Any] = {"id": n, "method": method, "params": params}
            if session:
                msg["sessionId"] = session
            os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while n not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise CdpError(f"no answer to {method} (browser exit code {self.proc.poll()})")
                self._cond.wait(min(left, 0.5))
            answer = self._answers.pop(n)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def page(self) -> Page:
        deadline = time.monotonic() + self.timeout
        while True:
            targets = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if targets:
                break
            if time.monotonic() > deadline:
                raise CdpError("the browser opened no tab")
            time.sleep(0.1)
        session = self.send("Target.attachToTarget", targetId=targets[0]["targetId"], flatten=True)["sessionId"]
        return Page(self, session)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("Browser.close")
            except (CdpError, OSError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass
        self.user_dir.cleanup()


class Page:
    """One tab: navigate, evaluate, wait for a condition, type and press keys, list its requests."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Network.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.send(method, self.session, **params)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && location.href.startsWith(" + json.dumps(url[:20]) + ")")

    def eval(self, expression: str) -> Any:
        """The value of a JS expression (a promise is awaited); a thrown error raises CdpError."""
        got = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in got:
            raise CdpError(f"{expression[:80]}: {got['exceptionDetails'].get('exception', {}).get('description')}")
        return got["result"].get("value")

    def wait(self, expression: str, timeout: float = 30, every: float = 0.05) -> Any:
        """Poll until the expression is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CdpError(f"timed out waiting for: {expression}")
            time.sleep(every)

    def type(self, text: str) -> None:
        """Text into the focused element, as a keyboard (or an input method) would enter it."""
        self.send("Input.insertText", text=text)

    def key(self, name: str, *, shift: bool = False) -> None:
        """Press and release one key on the focused element (Enter, Escape, Tab)."""
        key, code, text = KEYS[name]
        mods = 8 if shift else 0
        down = {"key": key, "code": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code,
                "modifiers": mods}
        self.send("Input.dispatchKeyEvent", type="keyDown" if not text else "keyDown", text=text, **down)
        self.send("Input.dispatchKeyEvent", type="keyUp", **down)

    def click(self, selector: str) -> None:
        """A mouse click at the middle of the first element the CSS selector finds."""
        box = self.wait(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
                        " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                        " return r.width ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def requests(self) -> list[str]:
        """The URL of every request this tab made, in order (the Network domain's requestWillBeSent)."""
        return [e["params"]["request"]["url"] for e in list(self.browser.events)
                if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == self.session]

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
