"""The feature dashboard in headless Chromium, driven over the DevTools protocol: opened from
file://, one row per latent, search narrows the table, a latent view loads lazily, no console
errors, and injected markup stays text. Screenshots go to test-artifacts/.

Needs Debian's `chromium` (apt-get install -y chromium) and `websocket-client`; skipped without.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.dashboard.test_features_dashboard import D_SAE, HOSTILE, build_tiny_dashboard

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1400,1000", "--hide-scrollbars"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium: install Debian's with `apt-get install -y chromium` (.ci/run does)")


class Browser:
    """One headless Chromium page over CDP; records console errors, exceptions and dialogs."""

    def __init__(self, exe: str, profile: Path):
        websocket = pytest.importorskip("websocket", reason="pip install websocket-client to drive Chromium")
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._port(profile / "DevToolsActivePort")
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        self.ws = websocket.create_connection(url, timeout=20, suppress_origin=True)
        self.next_id, self.events, self.errors = 0, [], []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def _port(self, file: Path, timeout: float = 20) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if file.is_file() and file.read_text().strip():
                return int(file.read_text().split()[0])
            if self.proc.poll() is not None:
                pytest.fail(f"Chromium exited with code {self.proc.returncode} before opening DevTools")
            time.sleep(0.05)
        pytest.fail("Chromium did not open its DevTools port within 20 s")

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict) -> None:
        self.events.append(msg.get("method"))
        p = msg.get("params", {})
        if msg.get("method") == "Runtime.exceptionThrown":
            self.errors.append(p["exceptionDetails"].get("exception", {}).get("description", str(p)))
        elif msg.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append(str([a.get("value", a.get("description")) for a in p.get("args", [])]))
        elif msg.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
            self.errors.append(p["entry"]["text"])
        elif msg.get("method") == "Page.javascriptDialogOpening":
            self.errors.append(f"dialog: {p.get('message')}")
            self.ws.send(json.dumps({"id": 10**6, "method": "Page.handleJavaScriptDialog",
                                     "params": {"accept": True}}))

    def js(self, expr: str):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expr}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.js(expr):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expr}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && !!document.querySelector('#latent-table tbody tr')")

    def screenshot(self, path: Path) -> None:
        import base64

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture()
def browser(tmp_path):
    b = Browser(_chromium(), tmp_path / "profile")
    yield b
    b.close()


def test_dashboard_in_headless_chromium(browser, tiny_model, tiny_corpus, tmp_path):
    data, labels, result = build_tiny_dashboard(tiny_model, tiny_corpus, tmp_path)
    browser.open(result.index.as_uri())
    assert browser.js("document.querySelectorAll('#latent-table tbody tr[data-id]').length") == D_SAE
    assert browser.js("document.querySelectorAll('#scatter .point').length") > D_SAE // 2
    browser.screenshot(ARTIFACTS / "features_overview.png")

    # Search narrows the table to the rows that mention the query.
    visible = "[...document.querySelectorAll('#latent-table tbody tr[data-id]')]"
    browser.js("const s = document.getElementById('search'); s.value = 'quotes and';"
               "s.dispatchEvent(new Event('input'))")
    assert browser.js(f"{visible}.map(r => r.dataset.id)") == ["2"]
    browser.js("const t = document.getElementById('search'); t.value = ''; t.dispatchEvent(new Event('input'))")
    assert browser.js(f"{visible}.length") == D_SAE

    # Sorting by density puts the densest latent first.
    browser.js("document.querySelector('th[data-key=freq]').click()")
    densest = int(data.latents_F[int(data.count_F.argmax())])
    assert browser.js("document.querySelector('#latent-table tbody tr[data-id]').dataset.id") == str(densest)

    # Clicking a row loads latents/<id>.js and renders the view.
    browser.js("document.querySelector('#latent-table tbody tr[data-id=\"1\"]').click()")
    browser.wait_for("document.querySelectorAll('#latent-view .ex .tok').length > 0 && "
                     "!!document.querySelector('#latent-view .js-plotly-plot')")
    assert browser.js("location.hash") == "#latent-1"
    n_top = int((data.top_row_FS[1] >= 0).sum())
    assert browser.js("document.querySelector('#latent-view .examples').querySelectorAll('.ex').length") == n_top
    assert browser.js("document.querySelector('#latent-view .label').textContent") == labels[1]
    browser.screenshot(ARTIFACTS / "features_latent.png")

    # Every hostile string is on the page as text, none ran or became an element.
    for view in ("#latent-0", "#latent-1", ""):
        browser.js(f"location.hash = '{view}'")
        time.sleep(0.2)
    shown = browser.js("[...document.querySelectorAll('.tok, .chip, .label')].map(e => e.textContent)")
    for text in HOSTILE[:2]:
        assert text in shown
    assert browser.js("typeof window.__xss") == "undefined"
    assert browser.js("document.querySelectorAll('img').length") == 0
    assert browser.js("document.querySelectorAll('script:not([src])').length") == 3  # plotly, data, app
    assert not browser.errors, browser.errors


def test_table_of_60k_latents_renders_only_a_window(browser, tmp_path):
    """A dictionary of 60,000 latents: the table keeps about a window of rows in the page, and
    scrolling, search and sorting still reach every latent."""
    from types import SimpleNamespace

    import torch

    from sae.dashboard.features import render_index

    n = 60_000
    gen = torch.Generator().manual_seed(0)
    count_F = torch.randint(0, 5000, (n,), generator=gen)
    data = SimpleNamespace(meta={"model": "synthetic", "hook": "blocks.0.hook_resid_post", "d_sae": n},
                           count_F=count_F, freq_F=count_F / 1e6, latents_F=torch.arange(n), n_tokens=1_000_000)
    rows = [[i, "", float(count_F[i]) / 1e6, 1.0 + i % 7, 2.0 + i % 5, int(count_F[i]), [f"tok{i}", "the"],
             [f"logit{i}"]] for i in range(n)]
    index = tmp_path / "index.html"
    index.write_text(render_index(data, rows, "60k latents"), encoding="utf-8")
    t0 = time.perf_counter()
    browser.open(index.as_uri())
    print(f"60k-latent table interactive after {time.perf_counter() - t0:.2f} s")
    in_page = "document.querySelectorAll('#latent-table tbody tr[data-id]')"
    assert browser.js(f"{in_page}.length") < 200
    assert browser.js("document.getElementById('count').textContent") == f"{n} of {n} latents"
    assert browser.js(f"{in_page}[0].dataset.id") == "0"

    # Scrolling to the bottom brings the last latents into the page.
    browser.js("const w = document.querySelector('.table-wrap'); w.scrollTop = w.scrollHeight")
    browser.wait_for(f"[...{in_page}].some(r => r.dataset.id === '{n - 1}')")
    assert browser.js(f"{in_page}.length") < 200

    # Search reaches a latent far down the list; clearing it restores all.
    browser.js("const s = document.getElementById('search'); s.value = 'tok54321';"
               "s.dispatchEvent(new Event('input'))")
    assert browser.js(f"[...{in_page}].map(r => r.dataset.id)") == ["54321"]
    browser.js("const t = document.getElementById('search'); t.value = ''; t.dispatchEvent(new Event('input'))")
    assert browser.js("document.getElementById('count').textContent") == f"{n} of {n} latents"

    # Sorting by density puts the densest latent (lowest id among ties) first.
    browser.js("document.querySelector('th[data-key=freq]').click()")
    top = int(count_F.max())
    densest = int((count_F == top).nonzero()[0])
    assert browser.js(f"{in_page}[0].dataset.id") == str(densest)
    assert not browser.errors, browser.errors

