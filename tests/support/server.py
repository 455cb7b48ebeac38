"""Test helpers: `scf-risk serve` as a real uvicorn subprocess on 127.0.0.1, and headless Chromium
driven over the DevTools protocol (to send the X-API-Key header and measure what is visible)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m serving serve` in a subprocess; waits for /readyz, stops on exit."""

    def __init__(
        self, cwd: Path, env: dict[str, str], *, workers: int = 1, wait_for: str = "/readyz"
    ) -> None:
        self.cwd = cwd
        self.env = {**os.environ, **env}
        self.workers = workers
        self.wait_for = wait_for
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        cmd = [sys.executable, "-m", "serving", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", str(self.workers)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}{self.wait_for}", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server not ready after 120 s:\n{self.output()}")

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# -- headless Chromium ---------------------------------------------------------------------------
def chromium_or_skip() -> str:
    """The chromium binary; in CI its absence is a failure, elsewhere a skip."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary:
        return binary
    if os.environ.get("CI"):
        pytest.fail("chromium is required in CI (.ci/run installs Debian's chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


class Browser:
    """Chromium with remote debugging on a port it picks; one page target driven over CDP."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.profile = tempfile.mkdtemp(prefix="scf-risk-chromium-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.console: list[dict[str, Any]] = []  # the last visit's console and log errors

    def __enter__(self) -> Browser:
        cmd = [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"]
        cmd += ["--remote-debugging-port=0", "--window-size=1200,1600", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not active.exists():
            time.sleep(0.1)
        if not active.exists():
            raise RuntimeError("chromium did not open its DevTools port")
        time.sleep(0.2)
        self.port = int(active.read_text().splitlines()[0])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def visit(
        self,
        url: str,
        *,
        headers: dict[str, str],
        script: str,
        screenshot: Path | None = None,
        until: str | None = None,
    ) -> Any:
        """Load `url` with extra request headers, wait until the page is loaded (and, when given,
        until the expression `until` is truthy: pages that render with JavaScript), then return
        the JSON value of `script`. The page's errors (console errors, uncaught exceptions, log
        entries of level error such as Content-Security-Policy violations) are in `console`."""
        return asyncio.run(self._visit(url, headers, script, screenshot, until))

    async def _visit(
        self,
        url: str,
        headers: dict[str, str],
        script: str,
        screenshot: Path | None,
        until: str | None,
    ) -> Any:
        import aiohttp

        targets = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws,
        ):
            counter = 0

            async def call(method: str, **params: Any) -> dict[str, Any]:
                nonlocal counter
                counter += 1
                await ws.send_json({"id": counter, "method": method, "params": params})
                while True:
                    msg = json.loads((await asyncio.wait_for(ws.receive(), 30)).data)
                    self._note(msg)
                    if msg.get("id") == counter:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return dict(msg.get("result", {}))

            await call("Log.enable")
            await call("Runtime.enable")
            await call("Log.clear")  # enabling replays the earlier pages' entries
            await call("Runtime.discardConsoleEntries")
            self.console = []
            await call("Network.enable")
            await call("Network.setExtraHTTPHeaders", headers=headers)
            await call("Page.enable")
            await call("Page.navigate", url=url)
            result: dict[str, Any] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                state = await call(
                    "Runtime.evaluate", expression="document.readyState", returnByValue=True
                )
                ready = state["result"].get("value") == "complete"
                if ready and until is not None:
                    done = await call("Runtime.evaluate", expression=until, returnByValue=True)
                    ready = bool(done["result"].get("value"))
                if ready:
                    result = await call("Runtime.evaluate", expression=script, returnByValue=True)
                    break
                await asyncio.sleep(0.1)
            if screenshot is not None:
                shot = await call("Page.captureScreenshot", format="png")
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            return json.loads(result["result"]["value"])

    def _note(self, msg: dict[str, Any]) -> None:
        """Keep an event of the page that reports an error."""
        params = msg.get("params", {})
        method = msg.get("method")
        if method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.console.append({"source": params["entry"].get("source"), **params["entry"]})
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.console.append({"source": "console", "args": params.get("args")})
        elif method == "Runtime.exceptionThrown":
            self.console.append({"source": "exception", **params.get("exceptionDetails", {})})
