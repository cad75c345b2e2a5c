"""The web page at ``/`` in a real headless Chromium, against a real server process.

The browser tests need Chromium and are skipped, saying so, where none is installed (Debian:
``apt-get install chromium``; elsewhere point ``BLACKBOX_SAL_CHROMIUM`` at a Chrome or Chromium
binary). They run ``blackbox-sal serve`` on a free port, then drive the browser three ways:
``--screenshot`` (the PNG is decoded here, with zlib and numpy, and its pixels checked for the
heatmap's colours), ``--dump-dom`` (the rendered DOM against the server's own JSON for the same
request) and the DevTools protocol over ``--remote-debugging-pipe`` (the keyboard: tab order,
visible focus, Ctrl+Enter). Chromium enforces the page's Content-Security-Policy, so these
tests also show that the page runs under it.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blackbox_sal

MIXED = "a fine film but the plot was dull"  # "fine" speaks against the prediction (rotten), "dull" for it
INJECTED = "<img src=x onerror=alert(1)> dull"
CONTROLS = ["text", "model", "method", "target", "backend", "words", "explain"]  # the tab order
PAIR_CONTROLS = ["text", "target-text", "model", "method", "backend", "explain"]  # an encoder/decoder pair's


def _chromium() -> str | None:
    named = os.environ.get("BLACKBOX_SAL_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = _chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium: the page's browser tests are opt-in (apt-get install chromium, "
                             "or set BLACKBOX_SAL_CHROMIUM to a Chrome or Chromium binary)")


# -- the server ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``blackbox-sal serve`` (the bundled model, as "default") on a free port; its base URL."""
    if CHROMIUM is None:
        pytest.skip("no Chromium")
    yield from _serving(tmp_path_factory, [])


def _serving(tmp_path_factory: pytest.TempPathFactory, models: list[str]) -> Iterator[str]:
    """``blackbox-sal serve -q MODEL...`` on a free port until the generator is closed; its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "stderr.txt"
    env = dict(os.environ)  # the session's private gradient-graph cache included
    root = str(Path(blackbox_sal.__file__).resolve().parent.parent)  # the code under test
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "blackbox_sal", "serve", "--port", str(port), "-q", *models],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(base + "/v2/health/ready", timeout=2) as r:
                    if json.load(r) == {"ready": True}:
                        break
            except OSError:
                pass
            if time.monotonic() > end:
                pytest.fail(f"the server was not ready within 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _explain(base: str, text: str, target: str | None = None, **parameters: Any) -> dict[str, Any]:
    """The server's explanation object for the request the page makes."""
    body = json.dumps({"instances": [{"text": text, "target": target}], "parameters": parameters}).encode()
    request = urllib.request.Request(base + "/v1/models/default:explain", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        out: dict[str, Any] = json.load(r)["explanations"][0]
        return out


def _url(base: str, **query: str) -> str:
    return base + "/?" + urllib.parse.urlencode(query)


# -- the browser ---------------------------------------------------------------------------------

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                 "--hide-scrollbars", "--window-size=1200,900"]


def _run_chromium(jobs: list[list[str]]) -> list[str]:
    """Each job's arguments run by its own Chromium (its own profile), all at the same time;
    their standard outputs."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as tmp:
        procs = [subprocess.Popen([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={tmp}/{k}", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                 for k, args in enumerate(jobs)]
        outs = []
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                pytest.fail("Chromium took over 60 s")
            assert proc.returncode == 0, f"Chromium failed ({proc.returncode})"
            outs.append(out.decode("utf-8"))
        return outs


@dataclass
class Token:
    attrs: dict[str, str]
    text: str = ""


class Page(HTMLParser):
    """What the tests read from a dumped DOM: every element, the heatmap's spans and text, the
    text of each element with an id, and each control's label."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.tokens: list[Token] = []
        self.heatmap = ""
        self.by_id: dict[str, str] = {}
        self.labels: dict[str, str] = {}  # control id -> the text of its label
        self._open: list[tuple[str, str | None, bool, bool]] = []  # tag, id, in the heatmap, a token
        self._label_for: list[str | None] = []

    @classmethod
    def of(cls, dom: str) -> Page:
        page = cls()
        page.feed(dom)
        page.close()
        return page

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                      "track", "wbr"})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        classes = a.get("class", "").split()
        if tag == "label" and a.get("for"):
            self.labels.setdefault(a["for"], "")
        if tag in self.VOID:
            return
        in_heat = "heatmap" in classes or any(h for _, _, h, _ in self._open)
        is_token = tag == "span" and "tok" in classes
        if is_token:
            self.tokens.append(Token(a))
        self._open.append((tag, a.get("id"), in_heat, is_token))
        if tag == "label":
            self._label_for.append(a.get("for"))
        if a.get("id"):
            self.by_id.setdefault(a["id"], "")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        while self._open:
            t, _, _, _ = self._open.pop()
            if t == "label" and self._label_for:
                self._label_for.pop()
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident, _, _ in self._open:
            if ident:
                self.by_id[ident] += data
        if any(h for _, _, h, _ in self._open):
            self.heatmap += data
        if any(t for _, _, _, t in self._open):
            self.tokens[-1].text += data
        for target in self._label_for:
            if target:
                self.labels[target] += data

    def text(self, ident: str) -> str:
        return " ".join(self.by_id.get(ident, "").split())


# -- PNG -----------------------------------------------------------------------------------------


def _png_rgb(path: Path) -> np.ndarray:
    """An 8-bit RGB or RGBA, non-interlaced PNG (Chromium's screenshots) as an (h, w, 3) array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, head = 8, [], b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, chunk = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            head = chunk
        elif kind == b"IDAT":
            idat.append(chunk)
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", head)
    assert depth == 8 and color in (2, 6) and interlace == 0, "only 8-bit RGB(A), non-interlaced"
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    out = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        row = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int64)
        if kind == 0:
            line = row
        elif kind == 2:  # up
            line = (row + prior) % 256
        elif kind == 1:  # sub: a running sum along each channel
            line = np.cumsum(row.reshape(width, bpp), axis=0).reshape(-1) % 256
        else:  # average (3) and Paeth (4) depend on the reconstructed left byte: one at a time
            r, up, cur = row.tolist(), prior.tolist(), [0] * stride
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                if kind == 3:
                    cur[i] = (r[i] + (left + up[i]) // 2) & 255
                else:
                    ul = up[i - bpp] if i >= bpp else 0
                    p = left + up[i] - ul
                    pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else up[i] if pb <= pc else ul
                    cur[i] = (r[i] + pred) & 255
            line = np.array(cur, dtype=np.int64)
        out[y] = line
        prior = line
    return out.reshape(height, width, bpp)[:, :, :3]


def _rgb(style: str, prop: str) -> tuple[int, int, int]:
    m = re.search(rf"(?:^|;)\s*{prop}:\s*rgb\((\d+),\s*(\d+),\s*(\d+)\)", style)
    assert m, f"no {prop} in {style!r}"
    return int(m[1]), int(m[2]), int(m[3])


def _contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    def luminance(rgb: tuple[int, int, int]) -> float:
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in rgb)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# -- the tests -----------------------------------------------------------------------------------


def test_the_page_is_one_self_contained_accessible_file() -> None:
    """No external resource (it works air-gapped), a language, no data put in as HTML."""
    page = resources.files("blackbox_sal.server").joinpath("page.html").read_text("utf-8")
    assert re.search(r'<html lang="en"', page)
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(|<link\b|\bsrc=", page, re.I), \
        "the page must not load anything from elsewhere"
    assert "innerHTML" not in page and "outerHTML" not in page and "insertAdjacentHTML" not in page
    assert "document.write" not in page and "eval(" not in page


@dataclass
class Rendered:
    page: Page  # the page run from a link on a text with evidence both ways, by --dump-dom
    png: Path  # its --screenshot
    expected: dict[str, Any]  # the server's answer to the same request


@pytest.fixture(scope="module")
def rendered(server: str, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    png = tmp_path_factory.mktemp("shot") / "page.png"
    url = _url(server, text=MIXED, run="1")
    wait = "--virtual-time-budget=10000"  # virtual time: it also waits for the page's requests
    _, dom = _run_chromium([[wait, f"--screenshot={png}", url], [wait, "--dump-dom", url]])
    return Rendered(Page.of(dom), png, _explain(server, MIXED))


@needs_chromium
def test_the_heatmap_holds_the_servers_scores(rendered: Rendered) -> None:
    page, expected = rendered.page, rendered.expected
    assert page.text("error") == ""
    assert [t.attrs["data-token"] for t in page.tokens] == [t["text"] for t in expected["tokens"]]
    assert [t.text for t in page.tokens] == [MIXED[t["start"]:t["end"]] for t in expected["tokens"]]
    assert [(int(t.attrs["data-start"]), int(t.attrs["data-end"])) for t in page.tokens] == \
        [(t["start"], t["end"]) for t in expected["tokens"]]
    assert [float(t.attrs["data-score"]) for t in page.tokens] == \
        pytest.approx([t["score"] for t in expected["tokens"]], rel=1e-9, abs=1e-12)
    assert page.heatmap == MIXED  # every character once, in order, the spaces between tokens too
    scores = [float(t["score"]) for t in expected["tokens"]]
    assert min(scores) < 0 < max(scores), "the text should have evidence both ways"
    # the signs are there in words and lines, not only in colours
    signs = {t.attrs["data-token"]: t.attrs["class"].split() for t in page.tokens}
    assert "pos" in signs["dull"] and "neg" in signs["fine"]
    assert all(re.search(r": [+\u2212]\d", t.attrs["title"]) for t in page.tokens if float(t.attrs["data-score"]))

    label = expected["prediction"]["label"]
    assert label == "rotten" and page.text("prediction") == label
    assert page.text("target-label") == expected["target"]["label"]
    section = next(a for tag, a in page.elements if tag == "section")
    assert section["data-label"] == label
    assert float(section["data-delta"]) == pytest.approx(expected["convergence_delta"], rel=1e-9)
    delta = page.text("delta")
    assert delta.startswith(("+", "\u2212")) and "% of f(x)" in delta
    for ident, key in (("fx", "target_value"), ("fbase", "baseline_value")):
        assert float(page.text(ident).replace("\u2212", "-")) == pytest.approx(expected[key], rel=1e-3)
    assert "method ig" in page.text("meta") and "backend " + expected["backend"] in page.text("meta")
    assert "s on the server" in page.text("meta")
    assert page.text("status").startswith("Explained: prediction rotten")
    # the accessible table: one row per token, with its signed score
    rows = [a for tag, a in page.elements if tag == "tr" and "data-score" in a]
    assert [float(a["data-score"]) for a in rows] == pytest.approx(scores, rel=1e-9, abs=1e-12)


@needs_chromium
def test_the_screenshot_shows_both_colours_where_the_tokens_are(rendered: Rendered) -> None:
    image = _png_rgb(rendered.png)
    assert image.shape == (900, 1200, 3)
    scored = [(float(t.attrs["data-score"]), k, _rgb(t.attrs["style"], "background-color"))
              for k, t in enumerate(rendered.page.tokens)]
    strongest_for, strongest_against = max(scored), min(scored)
    assert strongest_for[2] != strongest_against[2]
    where = []
    for _, k, rgb in (strongest_for, strongest_against):
        close = np.all(np.abs(image.astype(np.int64) - np.array(rgb)) <= 3, axis=2)
        # a token's box is hundreds of pixels; the legend's gradient has a colour on a few columns
        assert close.sum() >= 300, f"token {k}'s colour {rgb} covers {close.sum()} pixels"
        ys, xs = np.nonzero(close)
        where.append((k, float(np.median(xs)), float(np.median(ys))))
    (k_for, x_for, y_for), (k_against, x_against, y_against) = where
    assert abs(y_for - y_against) < 20, "both on the heatmap's line"
    assert (x_for > x_against) == (k_for > k_against), "in the order of the text"
    blue = (image[:, :, 2].astype(int) - image[:, :, 0] > 80).sum()
    red = (image[:, :, 0].astype(int) - image[:, :, 2] > 30).sum()
    assert blue > 500 and red > 500


@needs_chromium
def test_text_on_the_heatmap_keeps_aa_contrast(rendered: Rendered) -> None:
    for t in rendered.page.tokens:
        ratio = _contrast(_rgb(t.attrs["style"], "background-color"), _rgb(t.attrs["style"], "color"))
        assert ratio >= 4.5, (t.attrs["data-token"], ratio)


@needs_chromium
def test_every_control_has_a_label_and_the_tab_order_is_the_reading_order(rendered: Rendered) -> None:
    page = rendered.page
    html = next(a for tag, a in page.elements if tag == "html")
    assert html.get("lang") == "en"
    controls = [(tag, a) for tag, a in page.elements if tag in ("input", "select", "textarea", "button")]
    # the target text is an encoder/decoder pair's alone: hidden (out of the tab order) for a classifier
    assert [a["id"] for _, a in controls if a["id"] != "target-text"] == CONTROLS
    assert "hidden" in next(a for tag, a in page.elements if a.get("id") == "pair-fields")
    for tag, a in controls:
        name = page.text(a["id"]) if tag == "button" else " ".join(page.labels.get(a["id"], "").split())
        assert name, f"{tag}#{a['id']} has no label"
    assert all(int(a["tabindex"]) <= 0 for _, a in page.elements if "tabindex" in a), "no tab order by hand"
    live = {a.get("id"): a for _, a in page.elements if "aria-live" in a}
    assert live["status"]["role"] == "status" and live["error"]["role"] == "alert"


# -- the DevTools protocol: the keyboard, and more pages from one browser -------------------------


class DevTools:
    """The DevTools protocol over ``--remote-debugging-pipe``: JSON messages ending in NUL,
    Chromium reading fd 3 and writing fd 4. No websocket client needed."""

    def __init__(self, chromium: str, profile: str) -> None:
        import fcntl

        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()

        def pipes() -> None:  # in the child: its ends on fds 3 and 4, inherited
            a = fcntl.fcntl(to_child, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([chromium, *BROWSER_FLAGS, f"--user-data-dir={profile}",
                                      "--remote-debugging-pipe", "about:blank"], preexec_fn=pipes,
                                     close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buffer, self._id = b"", 0

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 20) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._id:
                    assert "error" not in answer, (method, answer["error"])
                    result: dict[str, Any] = answer["result"]
                    return result
            ready, _, _ = select.select([self._read], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise TimeoutError(f"DevTools: no answer to {method}")
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                raise ConnectionError("Chromium closed the DevTools pipe")
            self._buffer += chunk

    def open(self, url: str) -> Tab:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        return Tab(self, target, self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)


@dataclass
class Tab:
    """One page in the browser."""

    browser: DevTools
    target: str
    session: str

    def js(self, expression: str) -> Any:
        answer = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session)
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.03)
        raise TimeoutError(expression)

    def dom(self) -> Page:
        """Once the page shows an explanation or an error, its DOM."""
        self.wait_for("!!(document.querySelector('section.result') || document.getElementById('error').textContent)")
        return Page.of(str(self.js("document.documentElement.outerHTML")))

    def key(self, key: str, code: str, keycode: int, modifiers: int = 0, text: str | None = None) -> None:
        """A key pressed and released (modifiers: 1 Alt, 2 Ctrl, 4 Meta, 8 Shift)."""
        event: dict[str, Any] = {"key": key, "code": code, "windowsVirtualKeyCode": keycode,
                                 "nativeVirtualKeyCode": keycode, "modifiers": modifiers}
        down = {"type": "keyDown", "text": text} if text else {"type": "rawKeyDown"}
        self.browser.call("Input.dispatchKeyEvent", {**down, **event}, self.session)
        self.browser.call("Input.dispatchKeyEvent", {"type": "keyUp", **event}, self.session)

    def tab(self, back: bool = False) -> str:
        self.key("Tab", "Tab", 9, modifiers=8 if back else 0)
        return str(self.js("document.activeElement.id"))

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})


@pytest.fixture(scope="module")
def browser(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    if os.name != "posix":
        pytest.skip("the DevTools pipe is passed as fds 3 and 4 (POSIX)")
    assert CHROMIUM is not None
    devtools = DevTools(CHROMIUM, str(tmp_path_factory.mktemp("profile")))
    try:
        yield devtools
    finally:
        devtools.close()


@needs_chromium
def test_html_in_the_text_or_in_an_error_stays_text(server: str, browser: DevTools) -> None:
    tabs = [browser.open(_url(server, text=INJECTED, run="1")),
            browser.open(_url(server, text="fine", model=INJECTED, run="1"))]  # the name comes back in the error
    shown, failed = (tab.dom() for tab in tabs)
    for tab in tabs:
        tab.close()
    for page in (shown, failed):
        assert not [a for tag, a in page.elements if tag == "img"]
        assert not [a for _, a in page.elements if any(k.startswith("on") for k in a)]
    assert shown.text("error") == ""
    assert shown.heatmap == INJECTED
    assert any("<" in t.text for t in shown.tokens)
    assert f"no model named {INJECTED!r}" in failed.text("error")
    assert failed.text("error").startswith("Error: HTTP 404")


@needs_chromium
def test_a_failed_request_shows_the_servers_message(server: str, browser: DevTools) -> None:
    tab = browser.open(_url(server, text="fine", method="nonsense", run="1"))
    page = tab.dom()
    tab.close()
    error = page.text("error")
    assert error.startswith("Error: HTTP 400") and "nonsense" in error
    assert page.text("status") == "The request failed."
    assert not page.tokens and not [a for tag, a in page.elements if tag == "section"]


@needs_chromium
def test_the_page_works_from_the_keyboard_alone(server: str, browser: DevTools) -> None:
    tab = browser.open(server + "/")
    tab.wait_for("document.getElementById('target').options.length > 1")
    order = []
    for _ in CONTROLS:
        order.append(tab.tab())
        # the focus is visible: the page's 3px outline, as the keyboard moved it
        assert tab.js("document.activeElement.matches(':focus-visible') && "
                      "getComputedStyle(document.activeElement).outlineStyle !== 'none' && "
                      "parseFloat(getComputedStyle(document.activeElement).outlineWidth) >= 2")
    assert order == CONTROLS
    assert [tab.tab(back=True) for _ in CONTROLS[:-1]] == CONTROLS[-2::-1]
    browser.call("Input.insertText", {"text": MIXED}, tab.session)
    assert [tab.tab() for _ in range(3)][-1] == "target"
    tab.key("ArrowDown", "ArrowDown", 40)
    tab.key("ArrowDown", "ArrowDown", 40)  # predicted, rotten, fresh
    assert tab.js("document.getElementById('target').value") == "fresh"
    assert [tab.tab() for _ in range(2)][-1] == "words"
    tab.key(" ", "Space", 32, text=" ")
    assert tab.js("document.getElementById('words').checked") is True
    tab.key("Enter", "Enter", 13, modifiers=2)  # Ctrl+Enter, from wherever the focus is
    section = tab.wait_for("(s => s && {...s.dataset})(document.querySelector('section.result'))")
    assert section["label"] == "rotten" and section["target"] == "fresh"
    assert tab.js("document.activeElement.id") == "words", "the focus stays where it was"
    assert tab.js("document.querySelector('caption').textContent").startswith("Score of every word")
    expected = _explain(server, MIXED, target="fresh", words=True)
    scores = tab.js("[...document.querySelectorAll('.heatmap .tok')].map(s => Number(s.dataset.score))")
    assert scores == pytest.approx([w["score"] for w in expected["words"]], rel=1e-9, abs=1e-12)
    assert "target fresh" in tab.js("document.getElementById('status').textContent")
    assert "run=1" in tab.js("document.getElementById('link').href")
    tab.close()


# -- an encoder/decoder pair: a target text, and the generation's two matrices ---------------------

PAIR_SOURCE = "the cat sat on the mat"
ROOT = Path(__file__).resolve().parent.parent


def _generation(rows: int) -> dict[str, Any]:
    """A generation's JSON view (the server's :explain answer for a pair) with ``rows`` steps."""
    from blackbox_sal.render.generation import generation_json
    from blackbox_sal.vocabulary.result import GenerationExplanation

    scores = tuple(tuple(float(t - j) for j in range(rows)) for t in range(rows))
    return generation_json(GenerationExplanation(
        model="m", method="ig", source_text="a b", output_text="x", source_tokens=("a",) * rows,
        prefix_tokens=("<s>",) * rows, output_tokens=("x",) * rows, log_probs=(-1.0,) * rows,
        source_scores=scores, prefix_scores=scores, deltas=(0.0,) * rows, backend="graph", steps=8,
        teacher_forced=True))


def test_the_page_reads_a_pairs_metadata_and_generation_fields_the_server_gives() -> None:
    """The page tells a pair by the kind its metadata gives, sends target_text, and reads only
    fields that a generation's JSON view has (a renamed field would leave a matrix empty)."""
    from blackbox_sal.server.app import PAIR_KIND

    page = resources.files("blackbox_sal.server").joinpath("page.html").read_text("utf-8")
    assert f'metadata.kind === "{PAIR_KIND}"' in page
    assert "instance.target_text = " in page and 'id="target-text"' in page
    read = set(re.findall(r"\bg\.(\w+)", page))
    assert {"source_scores", "prefix_scores", "source_tokens", "prefix_tokens", "output_tokens"} <= read
    assert read <= set(_generation(2)), read - set(_generation(2))


def test_a_pairs_metadata_gives_the_page_its_kind_methods_backends_and_length() -> None:
    """``GET /v2/models/NAME`` on a pair: the V2 fields, and what the page needs to offer its
    form (graph only where the pair has a gradient graph); its explainer and the classifiers'
    metadata carry no kind."""
    pytest.importorskip("starlette")
    from types import SimpleNamespace
    from typing import cast

    from starlette.testclient import TestClient

    from blackbox_sal.methods import METHODS
    from blackbox_sal.server.app import PAIR_GENERATE, Server

    # the metadata reads a pair's gradient graph alone: stand-ins with and without one
    pairs = {"graph": cast(Any, SimpleNamespace(decoder_grad=object())),
             "fd": cast(Any, SimpleNamespace(decoder_grad=None))}
    server = Server({}, pairs=pairs)
    try:
        client = TestClient(server.app)
        assert client.get("/v2/models").json() == {"models": ["graph", "fd"]}
        methods = {"grad-x-input": METHODS["grad-x-input"].summary, "saliency": METHODS["saliency"].summary,
                   "ig": METHODS["ig"].summary}
        for name, backends in (("graph", ["graph", "fd"]), ("fd", ["fd"])):
            assert client.get(f"/v2/models/{name}").json() == {
                "name": name, "versions": ["1"], "platform": "blackbox-sal",
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "kind": "encoder-decoder", "methods": methods, "backends": backends, "generate": PAIR_GENERATE}
        assert "kind" not in client.get("/v2/models/graph-explainer").json()
        schema = client.get("/openapi.json").json()["components"]["schemas"]["ModelMetadata"]["properties"]
        assert schema["kind"]["enum"] == ["encoder-decoder"] and schema["generate"]["type"] == "integer"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pair_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``blackbox-sal serve`` with the bundled classifier ("default") and a tiny random T5 pair
    ("t5", from ``models/build_seq2seq.py``, ~10 s) on a free port; its base URL."""
    if CHROMIUM is None:
        pytest.skip("no Chromium")
    pytest.importorskip("torch", reason="torch and transformers build the pair")
    pytest.importorskip("transformers", reason="torch and transformers build the pair")
    from blackbox_sal.model.files import default_model_path

    out = tmp_path_factory.mktemp("seq2seq")
    subprocess.run([sys.executable, str(ROOT / "models" / "build_seq2seq.py"), "--out", str(out)], check=True,
                   capture_output=True, timeout=300)
    yield from _serving(tmp_path_factory, ["--method", "ig", "--steps", "8", str(default_model_path()),
                                           f"t5={out / 'seq2seq-t5'}"])


def _explain_pair(base: str, instance: dict[str, str]) -> dict[str, Any]:
    body = json.dumps({"instances": [instance]}).encode()
    request = urllib.request.Request(base + "/v1/models/t5:explain", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        out: dict[str, Any] = json.load(r)["explanations"][0]
        return out


def _matrices(page: Page) -> dict[str, list[dict[str, str]]]:
    """Each matrix table's (data-matrix) cells, in order: scored cells and unread ones."""
    out: dict[str, list[dict[str, str]]] = {}
    current = None
    for tag, a in page.elements:
        if tag == "table":
            current = a.get("data-matrix")
            if current:
                out[current] = []
        elif tag == "td" and current and ("data-score" in a or "unread" in a.get("class", "")):
            out[current].append(a)
    return out


@needs_chromium
def test_a_pair_shows_its_two_matrices_with_the_servers_scores(pair_server: str) -> None:
    """The page, run from links on the pair (teacher forced, and generated): every cell of
    both matrices is the server's score for the same request, hover titles name the step's
    token, the column's token and the score, the text keeps AA contrast, the tables have
    captions and scoped headers, and the form offers a target text in place of a label."""
    cases = [{"text": PAIR_SOURCE, "target_text": "a cat"}, {"text": PAIR_SOURCE}]
    wait = "--virtual-time-budget=20000"
    doms = _run_chromium([[wait, "--dump-dom", _url(pair_server, model="t5", run="1", **c)] for c in cases])
    for case, dom in zip(cases, doms, strict=True):
        page, g = Page.of(dom), _explain_pair(pair_server, case)
        assert page.text("error") == ""
        assert g["teacher_forced"] == ("target_text" in case)
        assert page.text("output-text") == " ".join(g["output_text"].split())
        section = next(a for tag, a in page.elements if tag == "section")
        assert section["data-output"] == g["output_text"] and section["data-forced"] == str(int(g["teacher_forced"]))
        how = "the target text" if case.get("target_text") else "generated"
        assert page.text("status").startswith("Explained: " + how)
        hidden = {a["id"]: "hidden" in a for _, a in page.elements if a.get("id") in ("pair-fields", "target-field",
                                                                                       "words-field")}
        assert hidden == {"pair-fields": False, "target-field": True, "words-field": True}
        assert [a["value"] for tag, a in page.elements if tag == "option" and "value" in a][:2] == ["default", "t5"]
        cells = _matrices(page)
        steps = len(g["output_tokens"])
        assert len(cells["source"]) == steps * len(g["source_tokens"]) and steps > 0
        assert [float(a["data-score"]) for a in cells["source"]] == \
            pytest.approx([v for row in g["source_scores"] for v in row], rel=1e-9, abs=1e-12)
        # the decoder reads its inputs 0..t at step t: above the diagonal, unread cells
        assert ["data-score" in a for a in cells["prefix"]] == \
            [j <= t for t, row in enumerate(g["prefix_scores"]) for j in range(len(row))]
        assert [float(a["data-score"]) for a in cells["prefix"] if "data-score" in a] == pytest.approx(
            [v for t, row in enumerate(g["prefix_scores"]) for j, v in enumerate(row) if j <= t], rel=1e-9, abs=1e-12)
        for kind, columns in (("source", g["source_tokens"]), ("prefix", g["prefix_tokens"])):
            scored = [a for a in cells[kind] if "data-score" in a]
            k = 0
            for t, row in enumerate(g[f"{kind}_scores"]):
                for j in range(len(row)):
                    if kind == "prefix" and j > t:
                        continue
                    title = scored[k]["title"]
                    word = "source" if kind == "source" else "output"
                    assert title.startswith(f"step {t}: {json.dumps(g['output_tokens'][t], ensure_ascii=False)} "
                                            f"\u2190 {word} {json.dumps(columns[j], ensure_ascii=False)}: "), title
                    assert re.search(r": [+\u2212\u00b1]\d", title), title
                    ratio = _contrast(_rgb(scored[k]["style"], "background-color"), _rgb(scored[k]["style"], "color"))
                    assert ratio >= 4.5, (title, ratio)
                    k += 1
        # the strongest cell of each matrix is fully coloured, blue or red by its sign
        for kind in ("source", "prefix"):
            scored = [a for a in cells[kind] if "data-score" in a]
            top = max(scored, key=lambda a: abs(float(a["data-score"])))
            assert _rgb(top["style"], "background-color") == ((0x21, 0x66, 0xac) if float(top["data-score"]) > 0
                                                               else (0xb2, 0x18, 0x2b))
        # accessible tables: a caption each, column headers and one row header per step
        tables = [a for tag, a in page.elements if tag == "table" and a.get("data-matrix")]
        assert len(tables) == 2 and sum(tag == "caption" for tag, _ in page.elements) >= 2
        assert sum(tag == "th" and a.get("scope") == "row" for tag, a in page.elements) == 2 * steps
        assert sum(tag == "th" and a.get("scope") == "col" for tag, a in page.elements) == \
            2 * 2 + len(g["source_tokens"]) + len(g["prefix_tokens"])


@needs_chromium
def test_a_pairs_form_works_from_the_keyboard(pair_server: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """On a pair the tab order is text, target text, model, method, backend, explain (the label
    target and word merging are hidden), and Ctrl+Enter explains the typed target text."""
    if os.name != "posix":
        pytest.skip("the DevTools pipe is passed as fds 3 and 4 (POSIX)")
    assert CHROMIUM is not None
    browser = DevTools(CHROMIUM, str(tmp_path_factory.mktemp("pair-profile")))
    try:
        tab = browser.open(_url(pair_server, model="t5"))
        tab.wait_for("!document.getElementById('pair-fields').hidden")
        assert [tab.tab() for _ in PAIR_CONTROLS] == PAIR_CONTROLS
        assert tab.tab(back=True) == "backend"
        tab.js(f"document.getElementById('text').value = {json.dumps(PAIR_SOURCE)}")
        tab.js("document.getElementById('target-text').value = 'a cat'")
        tab.key("Enter", "Enter", 13, modifiers=2)
        output = tab.wait_for("(s => s && s.dataset.output)(document.querySelector('section.generation'))", timeout=60)
        assert output == _explain_pair(pair_server, {"text": PAIR_SOURCE, "target_text": "a cat"})["output_text"]
        assert "target_text=a+cat" in tab.js("document.getElementById('link').href")
        tab.close()
    finally:
        browser.close()
