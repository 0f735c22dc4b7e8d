"""The HTTP side's guard in a real browser (Debian's Chromium through Playwright), against a real
gRPC server and gateway with a token: the viewer opened with the printed address works and keeps
the token in a cookie; a page of another origin on this machine cannot drive the server, even
in a browser that holds that cookie."""

from __future__ import annotations

import http.server
import logging
import threading
import time

import pytest
import torch

from attnscope import Client, Extractor
from attnscope.benchmarks.browser import launch_chromium
from attnscope.service import AttentionCore
from attnscope.service.background import BackgroundServer
from attnscope.service.gateway import Gateway

from tiny_models import build, word_tokenizer

playwright_api = pytest.importorskip("playwright.sync_api")
TOKEN = "viewer-test-token"
SERVICE = "/attnscope.v1.AttentionService/"
HEAD_READY = "window.attnscopeTimings && window.attnscopeTimings.headDrawMs !== undefined"


@pytest.fixture(scope="module")
def stack():
    core = AttentionCore({"tiny": Extractor(build("llama", dtype=torch.float32), word_tokenizer())})
    server = BackgroundServer(core, token=TOKEN)
    gateway = Gateway(server.address, port=0, token=TOKEN)
    gateway.start()
    yield server.address, gateway
    gateway.stop()
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    yield context
    context.close()


def wait_for_log(caplog, *parts: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for record in caplog.records:
            if all(p in record.getMessage() for p in parts):
                return record.getMessage()
        assert time.monotonic() < deadline, (
            f"no log line with {parts}: {[r.getMessage() for r in caplog.records]}"
        )
        time.sleep(0.05)


def test_the_printed_address_opens_the_viewer_and_the_token_stays_in_a_cookie(stack, context):
    _, gateway = stack
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    assert "?token=" in gateway.viewer_url
    page.goto(f"{gateway.viewer_url}&model=tiny&text=w1 w2 w3 w4&layer=1")
    page.wait_for_function(HEAD_READY, timeout=60_000)
    assert "token" not in page.url and "layer=1" in page.url  # the address bar holds no token
    assert page.locator("#error").is_hidden() and "6 tokens" in page.locator("#status").inner_text()
    (cookie,) = [c for c in context.cookies() if c["name"] == f"attnscope-token-{gateway.port}"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
    assert page.evaluate("document.cookie") == "", "no script can read the token's cookie"
    page.reload()  # the cookie keeps working without the token in the address
    page.wait_for_function(HEAD_READY, timeout=60_000)
    assert errors == []


def test_a_page_without_the_cookie_is_refused(stack, browser):
    _, gateway = stack
    context = browser.new_context()
    try:
        page = context.new_page()
        reply = page.goto(f"{gateway.url}/?model=tiny&text=w1")
        assert reply.status == 401 and "needs its token" in page.content()
        assert page.request.get(f"{gateway.url}/main.js").status == 401
        call = page.request.post(
            f"{gateway.url}{SERVICE}ListModels",
            data="{}",
            headers={"Content-Type": "application/json", "Connect-Protocol-Version": "1"},
        )
        assert call.status == 401 and call.json()["code"] == "unauthenticated"
        assert page.goto(f"{gateway.url}/?token=wrong").status == 401
        assert context.cookies() == []
    finally:
        context.close()


class _AttackPage(http.server.BaseHTTPRequestHandler):
    html = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.html)))
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, *args):
        pass


ATTACK = """<!doctype html><title>another site</title><script>
window.attack = (async () => {
  const target = "%(target)s";
  const body = JSON.stringify({ traceId: "%(trace)s" });
  const out = {};
  // A "simple" request: the browser sends it without asking, only the answer is hidden.
  try {
    const r = await fetch(target, { method: "POST", mode: "no-cors", credentials: "include",
                                     headers: { "Content-Type": "text/plain" }, body });
    out.noCors = r.type;
  } catch (err) { out.noCors = "failed: " + err.message; }
  // A Connect call proper: the browser asks first (preflight), and is told no.
  try {
    const r = await fetch(target, { method: "POST", credentials: "include", body,
      headers: { "Content-Type": "application/json", "Connect-Protocol-Version": "1" } });
    out.cors = r.status;
  } catch (err) { out.cors = "failed: " + err.message; }
  return out;
})();
</script>"""


def test_a_page_on_another_port_cannot_delete_a_trace(stack, context, caplog):
    """The viewer is open (the browser holds its cookie, which another port of this host gets
    too: cookies do not keep ports apart); a page served from another loopback port tries to
    delete a kept trace. Both requests are refused with 403 and the trace survives."""
    address, gateway = stack
    viewer = context.new_page()
    viewer.goto(f"{gateway.viewer_url}&model=tiny&text=w1 w2")
    viewer.wait_for_function(HEAD_READY, timeout=60_000)
    with Client(address, token=TOKEN) as client:
        trace_id = client.create_trace("w5 w6 w7", model="tiny").trace_id
    _AttackPage.html = (
        ATTACK % {"target": f"http://127.0.0.1:{gateway.port}{SERVICE}DeleteTrace", "trace": trace_id}
    ).encode()
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AttackPage)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with caplog.at_level(logging.INFO, logger="attnscope.http"):
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
            result = page.evaluate("window.attack")
            assert result["noCors"] == "opaque"  # sent: the browser only hides the answer from the page
            assert result["cors"].startswith("failed"), result  # the preflight was refused
            wait_for_log(caplog, "POST", "DeleteTrace", "http=403", "permission_denied")
            wait_for_log(caplog, "OPTIONS", "DeleteTrace", "http=403")
    finally:
        other.shutdown()
        other.server_close()
    with Client(address, token=TOKEN) as client:  # the trace is still there
        assert client.views(trace_id).tokens[1:4] == ["w5", "w6", "w7"]
        assert client.delete_trace(trace_id) is True
