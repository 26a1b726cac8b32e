"""`GET /`: the technician's status page, checked in a real headless Chromium.

The browser tests need Debian's `chromium` (/usr/bin/chromium, or the path in
$EDGE_AGENT_CHROMIUM); without it they skip and say so, or fail when
EDGE_AGENT_REQUIRE_BROWSER=1 (CI: a skip there would hide an untested page).
The suite never installs it; CI does, before `make test`.

Chromium is driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: NUL-separated JSON on fds 3 and 4), so there is
no websocket client, no driver binary and no dependency beyond the browser.
The page polls a real `HttpServer` on port 0 serving a snapshot the test
controls; each test waits for what the page shows with a deadline, never for
a fixed time. One browser per xdist worker, one isolated context per test.

`python tests/test_page.py docs/` regenerates the screenshots kept in the
docs (desktop and phone) from the same busy snapshot and its brownout history.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import page
from agent.classes import CLASS_NAMES
from agent.history import History, sample_from_document
from agent.http import HttpServer
from agent.routes import BACKPRESSURE_PATH
from agent.stats import LatencyHistogram, Snapshot

from samples import (
    LATENCY_PER_S,
    RATES,
    base_url,
    busy_snapshot,
    failing_snapshot,
    fetch,
    serving,
)

CHROMIUM = os.environ.get("EDGE_AGENT_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = os.access(CHROMIUM, os.X_OK)
# CI sets this so that a missing browser fails instead of skipping unseen.
REQUIRE_CHROMIUM = os.environ.get("EDGE_AGENT_REQUIRE_BROWSER") == "1"
NO_CHROMIUM = (
    f"{CHROMIUM} is not installed (Debian package `chromium`, which CI installs): "
    "the status page is not checked in a browser"
)
needs_chromium = pytest.mark.skipif(not HAVE_CHROMIUM and not REQUIRE_CHROMIUM, reason=NO_CHROMIUM)
# The flags this machine needs (no network but loopback: no background
# connections, no component updates, no sync) and root (no sandbox).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)
# Waits: the page polls once a second, so 15 s is >10 polls of slack on a
# loaded 2-core CI machine; a passing test waits ~1-3 s.
DEADLINE_S = 15.0


# ---------------------------------------------------------------- a busy agent


@dataclasses.dataclass(frozen=True)
class Reporting(Snapshot):
    """A snapshot whose document also carries fields other components add
    (the alert lane, stuck subscribers, write-through), merged in as given."""

    extra: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = super().to_json()
        for section, fields in self.extra.items():
            doc.setdefault(section, {}).update(fields)
        return doc


class Agent:
    """The loop's side of the HTTP server: every request sees the agent one
    second later, and the history records each snapshot as the loop would."""

    def __init__(
        self,
        *,
        subscribers: int = 2,
        latency: bool = True,
        agent_id: str = "",
        story: bool = False,
        extra: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.subscribers = subscribers
        self.latency = latency
        self.agent_id = agent_id
        self.extra = extra or {}
        self.failing = False
        self.calls = 0
        self.history = brownout_history() if story else History()

    def snapshot(self) -> Snapshot:
        if self.failing:
            raise RuntimeError("simulated: the agent cannot build its answer")
        n, self.calls = self.calls, self.calls + 1
        snap = busy_snapshot(n, subscribers=self.subscribers)
        if not self.latency:  # nothing measured yet: the histogram at zero
            snap = dataclasses.replace(snap, critical_latency=LatencyHistogram())
        if self.agent_id:
            snap = dataclasses.replace(snap, agent_id=self.agent_id)
        if self.extra:
            snap = Reporting(**vars(snap), extra=self.extra)
        self.history.record(snap, snap.loop_monotonic)
        return snap

    def clock(self) -> float:
        return 1000.0 + self.calls


@pytest.fixture
def agent() -> Agent:
    return Agent()


@pytest.fixture
def served(agent: Agent) -> Iterator[tuple[str, HttpServer]]:
    with serving(agent.snapshot, clock=agent.clock, history=agent.history) as srv:
        yield base_url(srv, "/"), srv


def brownout_history() -> History:
    """The ten minutes before the busy agent's first look: a brownout's burst
    (8 to 5 minutes ago) fills memory and the disk and slows alerts past
    100 ms at its peak, then the backlog drains. Counters end exactly at
    busy_snapshot(0)'s, so the rates across the seam are the busy ones."""
    end = busy_snapshot(0).to_json()
    mib = 1 << 20

    def burst(k: int) -> float:
        """0 outside the burst, up to 1 at its height, k seconds before the end."""
        if not 300 <= k < 480:
            return 0.0
        return min(1.0, (480 - k) / 20, (k - 300) / 20)

    def rates(k: int) -> dict[str, tuple[float, float]]:
        """class -> (in, out) events/s in the second that ends k-1 s before the end."""
        b = burst(k)
        if b:
            inn = {c: RATES[c] * (1 + 5 * b) for c in CLASS_NAMES}
            return {c: (inn[c], inn[c] if c in ("critical", "high") else 0.4 * inn[c]) for c in inn}
        drain = 1.6 if k < 300 else 1.0  # after the burst the backlog drains
        return {
            c: (RATES[c], RATES[c] * (drain if c in ("normal", "low") else 1.0))
            for c in CLASS_NAMES
        }

    def latency(k: int) -> list[int]:
        """Critical events per latency bucket (not cumulative) in that second."""
        if 380 <= k <= 392:
            return [0, 0, 4, 8, 10, 8, 4, 2, 2, 2, 0]  # 6 of 40 past 100 ms
        if burst(k):
            return [0, 2, 6, 10, 12, 8, 2, 0, 0, 0, 0]
        return list(LATENCY_PER_S)

    def gauges(k: int) -> tuple[int, int, int]:
        """used bytes, capacity bytes, events on disk."""
        if k >= 470:
            return 40 * mib, 128 * mib, 0
        if k > 300:
            fill = min(1.0, (470 - k) / 40)
            disk = 0 if k > 440 else int(1_450_000 * min(1.0, (440 - k) / 120))
            return int((40 + 340 * fill) * mib), int((128 + 256 * fill) * mib), disk
        return 301 * mib, 384 * mib, int(278_345 + 1_171_655 * k / 300)

    received = {c: float(end["priorities"][c]["received"]) for c in CLASS_NAMES}
    delivered = {c: float(end["priorities"][c]["delivered"]) for c in CLASS_NAMES}
    frames, rejected = end["ingest"]["frames"], end["rejected"]["total"]
    bounds = [le for le, _ in end["latency"]["critical"]["buckets"]]
    cumulative = [float(n) for _, n in end["latency"]["critical"]["buckets"]]
    samples = []
    for k in range(1, 601):
        # The counters k seconds before the end: those of k-1, less that second.
        for c, (inn, out) in rates(k).items():
            received[c] -= inn
            delivered[c] -= out
        frames -= 64 * (1 + 5 * burst(k))
        rejected -= 2
        per = latency(k)
        cumulative = [n - sum(per[: j + 1]) for j, n in enumerate(cumulative)]
        doc = json.loads(json.dumps(end))
        for c in CLASS_NAMES:
            doc["priorities"][c]["received"] = round(received[c])
            doc["priorities"][c]["delivered"] = round(delivered[c])
        doc["latency"]["critical"]["buckets"] = [
            [le, round(n)] for le, n in zip(bounds, cumulative, strict=True)
        ]
        doc["latency"]["critical"]["count"] = round(cumulative[-1])
        used, capacity, disk = gauges(k)
        doc["buffer"].update(used_bytes=used, capacity_bytes=capacity)
        doc["spill"]["pending_events"] = disk
        doc["ingest"]["frames"] = round(frames)
        doc["rejected"]["total"] = rejected
        doc["agent"]["taken_at"] = end["agent"]["taken_at"] - k
        samples.append(sample_from_document(doc, 1000.0 - k))
    ring = History()
    for sample in reversed(samples):
        ring.add(sample)
    return ring


# ---------------------------------------------------------------- without a browser


def test_get_root_serves_the_page_with_its_headers(served: tuple[str, HttpServer]) -> None:
    root, _ = served
    status, headers, body = fetch(root)
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    assert body.startswith(b"<!doctype html>")
    assert body == page.BODY_BYTES
    status, headers, body = fetch(root, "HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Type"] == "text/html; charset=utf-8"


def test_the_page_needs_no_snapshot_to_be_served() -> None:
    # The page is static; only its polls touch the snapshot.
    with serving(failing_snapshot) as srv:
        assert fetch(base_url(srv, "/"))[0] == 200


def test_the_page_references_nothing_outside_itself() -> None:
    html = page.HTML
    styles, scripts = "".join(page.PAGE.styles), "".join(page.PAGE.scripts)
    assert not re.search(r"""(?:src|href)\s*=\s*(?!["']?data:)""", html, re.I), "external asset"
    assert "@import" not in html and "url(" not in styles
    # The SVG namespace is a name, never fetched (createElementNS needs it).
    code = (scripts + styles).replace('"http://www.w3.org/2000/svg"', "SVG_NS")
    assert not re.search(r"https?://|//[a-z]", code, re.I)
    # Agent data is only ever written as text, never parsed as markup.
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", scripts)


def test_the_csp_allows_exactly_the_inline_script_and_style() -> None:
    csp = dict(page.HEADERS)["Content-Security-Policy"]

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    (script,) = re.findall(r"<script>(.*?)</script>", page.HTML, re.S)
    (style,) = re.findall(r"<style>(.*?)</style>", page.HTML, re.S)
    assert f"script-src 'sha256-{digest(script)}';" in csp
    assert f"style-src 'sha256-{digest(style)}';" in csp
    # No inline style attributes in the markup: the CSP would block them.
    assert not re.search(r"\sstyle\s*=", page.read_static(page.PAGE_FILE))


# ---------------------------------------------------------------- the page's files


STATIC = Path(page.__file__).parent / page.STATIC_DIR


def test_the_served_page_is_the_static_files_inlined() -> None:
    template = page.read_static(page.PAGE_FILE)
    assert '<link rel="stylesheet" href="status.css">' in template
    assert '<script src="status.js"></script>' in template
    assert page.PAGE.styles == ("\n" + (STATIC / "status.css").read_text(),)
    assert page.PAGE.scripts == ("\n" + (STATIC / "status.js").read_text(),)
    inlined = template.replace(
        '<link rel="stylesheet" href="status.css">', f"<style>{page.PAGE.styles[0]}</style>"
    ).replace('<script src="status.js"></script>', f"<script>{page.PAGE.scripts[0]}</script>")
    assert inlined == page.HTML
    # Every file there is part of the page: nothing stale is shipped.
    assert sorted(p.name for p in STATIC.iterdir()) == ["status.css", "status.html", "status.js"]


def test_the_static_files_are_package_data() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    assert cfg["options.package_data"]["agent"].split() == [f"{page.STATIC_DIR}/*"]


def test_the_script_asks_for_the_contracts_path() -> None:
    # Relative to the page, so it also works behind a path-prefixing proxy.
    (script,) = page.PAGE.scripts
    assert f'const API = "{BACKPRESSURE_PATH.lstrip("/")}";' in script


def test_inlining_hashes_every_script_and_style_and_leaves_other_markup_alone() -> None:
    files = {"a.js": "one();\n", "b.js": "two();\n", "s.css": "p { color: red; }\n"}
    template = (
        '<link rel="stylesheet" href="s.css">\n<script src="a.js"></script>\n'
        '<script src="b.js"></script>\n<img src="x.png">\n'
    )
    built = page.inline_assets(template, files.__getitem__)
    assert built.html == (
        "<style>\np { color: red; }\n</style>\n<script>\none();\n</script>\n"
        '<script>\ntwo();\n</script>\n<img src="x.png">\n'
    )
    assert built.scripts == ("\none();\n", "\ntwo();\n")
    csp = page.content_security_policy(built)
    assert f"script-src {page.csp_hash(built.scripts[0])} {page.csp_hash(built.scripts[1])};" in csp
    assert f"style-src {page.csp_hash(built.styles[0])};" in csp
    # No script at all: nothing may run.
    assert "script-src 'none';" in page.content_security_policy(page.inline_assets("<p>", str))


def test_a_file_that_would_end_its_own_element_is_refused() -> None:
    with pytest.raises(ValueError, match="evil.js: contains '</script'"):
        page.inline_assets('<script src="evil.js"></script>', lambda _: "x = '</SCRIPT>';")


# ---------------------------------------------------------------- the browser


class BrowserError(Exception):
    pass


class Browser:
    """Headless Chromium over the DevTools protocol on a pipe."""

    def __init__(self, executable: str, profile_dir: str, log_path: str) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. A tiny
        # Python shim moves the pipe ends there in the child: preexec_fn would
        # do it too but is unsafe with threads (the HTTP server's) running.
        low = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser_r, from_browser_w)]
        os.close(to_browser_r)
        os.close(from_browser_w)
        shim = "import os,sys; os.dup2(int(sys.argv[1]),3); os.dup2(int(sys.argv[2]),4); "
        shim += "os.execv(sys.argv[3], sys.argv[3:])"
        argv = [sys.executable, "-c", shim, str(low[0]), str(low[1]), executable]
        argv += [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"]
        self._log_path = log_path
        with open(log_path, "wb") as log:
            self._proc = subprocess.Popen(
                argv, pass_fds=low, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        for fd in low:
            os.close(fd)
        self._next_id = 0
        self._buffer = b""
        self.events: dict[str, list[dict[str, Any]]] = {}  # sessionId -> events

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + DEADLINE_S
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise BrowserError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
                if "method" in reply:
                    self.events.setdefault(reply.get("sessionId", ""), []).append(reply)

    def _read(self, deadline: float) -> list[dict[str, Any]]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError(f"no answer from Chromium; its log: {self.log_tail()}")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise BrowserError(f"Chromium exited; its log: {self.log_tail()}")
            self._buffer += chunk
        *messages, self._buffer = self._buffer.split(b"\0")
        return [json.loads(m) for m in messages]

    def log_tail(self) -> str:
        with open(self._log_path, "rb") as f:
            return f.read()[-2000:].decode("utf-8", "replace")

    def new_page(self, width: int, height: int, *, mobile: bool = False) -> Tab:
        # A context of its own per page: no cache, storage or cookies shared.
        context = self.call("Target.createBrowserContext")["browserContextId"]
        target = self.call(
            "Target.createTarget", {"url": "about:blank", "browserContextId": context}
        )["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        tab = Tab(self, session, target, context)
        for domain in ("Page", "Runtime", "Log"):
            tab.call(f"{domain}.enable")
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )
        return tab

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):  # already gone: the wait tells
            self.call("Browser.close")
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


class Tab:
    def __init__(self, browser: Browser, session: str, target: str, context: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target
        self.context = context

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, self.session)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str = "") -> Any:
        deadline = time.monotonic() + DEADLINE_S
        # Before the page has loaded its elements are not there yet: not true, not an error.
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        while True:
            value = self.evaluate(guarded)
            if value:
                return value
            if time.monotonic() > deadline:
                shown = self.evaluate("document.body && document.body.innerText")
                raise AssertionError(
                    f"page did not show {what or expression} within {DEADLINE_S} s;"
                    f" it shows:\n{shown}\nerrors: {self.errors()}"
                )
            time.sleep(0.05)

    def text(self, element_id: str) -> str:
        return self.evaluate(f"document.getElementById({json.dumps(element_id)}).textContent")

    def errors(self) -> list[str]:
        """Script exceptions, console errors and browser log errors (CSP refusals land here)."""
        found = []
        for event in self.browser.events.get(self.session, []):
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                found.append(str(params["exceptionDetails"]))
            elif event["method"] == "Runtime.consoleAPICalled" and params["type"] == "error":
                found.append(str(params["args"]))
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})
        self.browser.call("Target.disposeBrowserContext", {"browserContextId": self.context})


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.fail(NO_CHROMIUM + " (EDGE_AGENT_REQUIRE_BROWSER=1)")
    home = tmp_path_factory.mktemp("chromium")
    b = Browser(CHROMIUM, str(home / "profile"), str(home / "chromium.log"))
    yield b
    b.close()


@pytest.fixture
def tab_factory(browser: Browser) -> Iterator[Any]:
    tabs: list[Tab] = []

    def make(width: int = 1024, height: int = 768, *, mobile: bool = False) -> Tab:
        tab = browser.new_page(width, height, mobile=mobile)
        tabs.append(tab)
        return tab

    yield make
    for tab in tabs:
        tab.close()


LIVE_WITH_RATES = (
    "document.getElementById('conn').textContent.startsWith('LIVE')"
    " && document.querySelector('#class-normal td.in')"
    " && document.querySelector('#class-normal td.in').textContent !== '\u2014'"
)


def row(tab: Tab, name: str) -> dict[str, str]:
    """One class row of the table, column class -> text."""
    return tab.evaluate(
        f"Object.fromEntries([...document.querySelectorAll('#class-{name} td')]"
        ".map(td => [td.className.split(' ')[0], td.textContent]))"
    )


def overflow_x(tab: Tab, element_id: str = "") -> int:
    """How far the page (or one element's content) is wider than its box: > 0 scrolls sideways."""
    if element_id:
        return tab.evaluate(
            f"(e => e.scrollWidth - e.clientWidth)(document.getElementById('{element_id}'))"
        )
    return tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def bottom(tab: Tab, element_id: str) -> float:
    return tab.evaluate(f"document.getElementById('{element_id}').getBoundingClientRect().bottom")


@needs_chromium
def test_a_busy_agent_at_1024x768(served: tuple[str, HttpServer], tab_factory: Any) -> None:
    root, _ = served
    tab = tab_factory(1024, 768)
    tab.goto(root)
    tab.wait_for(LIVE_WITH_RATES, "LIVE with rates")

    assert tab.text("agent-id") == "gw-north-07"
    meta = tab.text("agent-meta")
    assert "running" in meta and "up 3d 1h 06m" in meta
    # The start as a time, not the raw 13-digit epoch (issue 12 item 8).
    assert "since 24 Nov 2025" in meta and "1764000000123" not in meta

    assert tab.text("up-state") == "\u2714 CONNECTED"
    assert tab.text("up-detail") == "2 subscribers \u00b7 2 peers"
    assert "refused sends17" in tab.text("up-kv")

    assert tab.text("mem-used") == "301.0 MiB"
    assert tab.text("mem-cap") == "384.0 MiB"
    assert tab.text("mem-budget") == "512.0 MiB"
    assert "59% of budget" in tab.text("mem-used-pct")
    assert "HIGH" in tab.text("mem-used-pct")  # 78% of capacity: said, not only coloured
    assert tab.text("mem-governor") == "\u00b7 governor: spilling"

    # Rates are the agent's own (its history: one sample per second of its clock).
    for name in CLASS_NAMES:
        cells = row(tab, name)
        expected = f"{RATES[name]:,}"
        assert cells["in"] == expected, (name, cells)
        assert cells["out"] == expected, (name, cells)
    normal = row(tab, "normal")
    assert normal["mem"] == "48,210 \u00b7 6.4 MiB"
    assert normal["disk"] == "182,344 \u00b7 24.1 MiB"
    assert row(tab, "low")["dropped"] == "DROPPED 1,200"
    assert row(tab, "critical")["dropped"] == "0"

    assert tab.text("spill-pending") == "278,345"
    assert "drain ETA 6m 52s" in tab.text("spill-eta")

    reasons = tab.text("rej-list")
    assert reasons.index("missing_field") < reasons.index("malformed") < reasons.index("bad_field")
    assert "2.0/s now" in tab.text("rej-rate")
    # The total is the sum of the class rates: one window, no disagreement.
    assert tab.text("in-rate") == "6,440" == f"{sum(RATES.values()):,}"

    # Most critical events take <= 2.5 ms; the tail reaches the 25 ms bucket.
    assert tab.text("lat-p99") == "p99 \u2264 25 ms"
    assert "\u2264 2.5 ms" in tab.text("lat-kv")

    alarms = tab.text("alarms")
    assert "DROPPED" in alarms and "1,200 low" in alarms
    assert "find when in the journal" in alarms  # what to do, not only what is wrong
    assert "NOT CONNECTED" not in alarms and "SLOW SUBSCRIBER" not in alarms
    # An old loss is a warning; only what is going wrong now goes in the title.
    assert tab.evaluate("document.title") == "gw-north-07"

    # 1024x768: nothing scrolls sideways, and what matters most is above the fold.
    assert overflow_x(tab) <= 0
    assert overflow_x(tab, "classes") <= 0
    for section in ("alarms", "upstream", "memory", "classes"):
        assert bottom(tab, section) <= 768, section
    assert tab.errors() == []


@needs_chromium
def test_no_subscriber_is_loud_on_a_phone(tab_factory: Any) -> None:
    agent = Agent(subscribers=0, latency=False, agent_id='<img src=x onerror="alert(1)">')
    with serving(agent.snapshot, clock=agent.clock, history=agent.history) as srv:
        tab = tab_factory(390, 844, mobile=True)
        tab.goto(base_url(srv, "/"))
        tab.wait_for(LIVE_WITH_RATES, "LIVE with rates")

        assert tab.text("up-state") == "\u2716 NOT CONNECTED"
        first_alarm = tab.evaluate("document.querySelector('#alarms .alarm').innerText")
        assert first_alarm.startswith("NOT CONNECTED")
        assert "58,145 in memory, 278,345 on disk" in first_alarm
        assert "check the head-end is running" in first_alarm
        assert tab.evaluate("document.title").startswith("NOT CONNECTED")
        assert row(tab, "normal")["out"] == "0"  # nothing leaves while nobody listens

        # No critical event measured: said, not left blank or made up.
        assert tab.text("lat-p99") == "n/a"

        # The agent id is shown as text, never run as markup.
        assert tab.text("agent-id") == '<img src=x onerror="alert(1)">'
        assert tab.evaluate("document.querySelectorAll('img').length") == 0

        # A phone: one column, nothing sideways (the class table included),
        # the alarm first on screen.
        assert overflow_x(tab) <= 0
        assert overflow_x(tab, "classes") <= 0
        assert (
            tab.evaluate("document.querySelector('#alarms .alarm').getBoundingClientRect().top")
            < 300
        )
        assert tab.errors() == []


@needs_chromium
def test_stale_when_the_agent_stops_answering(
    agent: Agent, served: tuple[str, HttpServer], tab_factory: Any
) -> None:
    root, srv = served
    tab = tab_factory()
    tab.goto(root)
    tab.wait_for(LIVE_WITH_RATES, "LIVE with rates")

    agent.failing = True  # HTTP 500 from here on
    tab.wait_for("document.body.classList.contains('stale')", "the STALE state")
    banner = tab.text("stale")
    assert banner.startswith("STALE \u2014 agent not answering (HTTP 500)")
    assert "Figures below are from" in banner
    assert tab.text("conn") == "STALE"
    assert tab.evaluate("document.title").startswith("STALE")
    # The last figures stay, marked as old rather than wiped.
    assert tab.text("agent-id") == "gw-north-07"
    assert row(tab, "normal")["mem"].startswith("48,210")

    agent.failing = False
    tab.wait_for("!document.body.classList.contains('stale')", "recovery to LIVE")
    assert tab.text("conn").startswith("LIVE")
    assert tab.evaluate("getComputedStyle(document.getElementById('stale')).display") == "none"

    srv.stop()  # nothing listens on the port any more
    tab.wait_for("document.body.classList.contains('stale')", "the STALE state")
    assert "(connection failed)" in tab.text("stale")


# ---------------------------------------------------------------- the last ten minutes


CHARTS_DRAWN = (
    "document.querySelectorAll('#chart-grid figure').length === 7"
    " && document.querySelector('#chart-normal path.line.in').getAttribute('d').length > 100"
)


def path_d(tab: Tab, selector: str) -> str:
    return tab.evaluate(f"document.querySelector({json.dumps(selector)}).getAttribute('d')")


@needs_chromium
def test_the_first_paint_has_rates_and_ten_minutes_of_charts(tab_factory: Any) -> None:
    agent = Agent(story=True)
    with serving(agent.snapshot, clock=agent.clock, history=agent.history) as srv:
        tab = tab_factory(1024, 768)
        tab.goto(base_url(srv, "/"))
        tab.wait_for("document.getElementById('conn').textContent.startsWith('LIVE')", "LIVE")
        # Issue 12 item 8: no "-" for every rate on the first paint; the agent's
        # history has them before the page has seen two answers.
        assert row(tab, "normal")["in"] == f"{RATES['normal']:,}"
        assert tab.text("in-rate") == "6,440"
        # "in the last 0 s" was the page's own history of one answer.
        assert tab.text("lat-note") == "2,400 events in the last 60 s"
        tab.wait_for(CHARTS_DRAWN, "the charts")
        for name in (*CLASS_NAMES, "memory", "disk", "latency"):
            assert tab.evaluate(f"document.querySelector('#chart-{name} svg').children.length") >= 2
        # Ingest and delivery per class: the label shows the latest second, the
        # story's last one (out 5,200) or, once the page has polled the agent
        # again (a loaded box), the busy snapshot's (out 8,320).
        label = tab.text("chart-normal")
        assert re.search("in 5,200 \u00b7 out (5,200|8,320)", label), label
        # Buffer use against the budget, events on disk, the latency tail past 100 ms.
        assert "budget 512.0 MiB" in tab.text("chart-memory")
        assert "278,345 events" in tab.text("chart-disk")
        assert path_d(tab, "#chart-latency path.line.over")  # the seconds over the bound
        assert path_d(tab, "#chart-latency path.bound").startswith("M0,")
        assert "10 min ago" in tab.text("chart-note")
        # Nothing sideways at 1024 px.
        assert overflow_x(tab) <= 0
        assert tab.errors() == []


@needs_chromium
def test_the_charts_are_readable_on_a_phone(tab_factory: Any) -> None:
    agent = Agent(story=True)
    with serving(agent.snapshot, clock=agent.clock, history=agent.history) as srv:
        tab = tab_factory(390, 844, mobile=True)
        tab.goto(base_url(srv, "/"))
        tab.wait_for(CHARTS_DRAWN, "the charts")
        assert overflow_x(tab) <= 0
        # One chart a row, the full width of the card: ~10 minutes in ~340 px.
        widths = tab.evaluate(
            "[...document.querySelectorAll('#chart-grid svg')]"
            ".map(e => e.getBoundingClientRect().width)"
        )
        assert len(widths) == 7 and min(widths) >= 300
        lefts = tab.evaluate(
            "new Set([...document.querySelectorAll('#chart-grid figure')]"
            ".map(e => e.getBoundingClientRect().left)).size"
        )
        assert lefts == 1
        assert tab.errors() == []


@needs_chromium
def test_fields_other_components_report_are_shown(tab_factory: Any) -> None:
    extra = {
        "agent": {"ingest_path": "compiled"},
        "ingest": {"lane": {"configured": True, "frames": 12, "events": 40, "noncritical": 3}},
        "upstream": {
            "peers": 3,
            "stalled": True,
            "stuck_dropped_messages": 41,
            "stuck_dropped_events": 4100,
        },
        "spill": {"write_through": ["critical", "high"]},
    }
    agent = Agent(extra=extra)
    with serving(agent.snapshot, clock=agent.clock, history=agent.history) as srv:
        tab = tab_factory(1024, 768)
        tab.goto(base_url(srv, "/"))
        tab.wait_for(LIVE_WITH_RATES, "LIVE with rates")
        assert "compiled ingest" in tab.text("agent-meta")
        assert tab.text("up-detail") == "2 subscribers \u00b7 3 peers"
        up = tab.text("up-kv")
        assert "STALLEDa subscriber stopped reading" in up
        assert "dropped for stuck41 msgs \u00b7 4,100 events" in up
        ingest = tab.text("in-kv")
        assert "lane events40" in ingest and "lane, not critical3" in ingest
        assert "write-throughcritical, high" in tab.text("spill-kv")
        # The agent's alarm for it, named as in `edge-agent status`.
        tab.wait_for("document.getElementById('alarms').textContent.includes('STUCK SUBSCRIBER')")
        assert tab.evaluate("document.title").startswith("STUCK SUBSCRIBER")
        assert tab.errors() == []


@needs_chromium
def test_a_just_started_agent_says_so_instead_of_zero_seconds(tab_factory: Any) -> None:
    agent = Agent()  # no history before the page's first look
    with serving(agent.snapshot, clock=agent.clock, history=agent.history) as srv:
        tab = tab_factory(1024, 768)
        tab.goto(base_url(srv, "/"))
        tab.wait_for(LIVE_WITH_RATES, "LIVE with rates")
        note = tab.text("lat-note")
        assert " 0 s" not in note and "events in the last" in note
        assert tab.errors() == []


# ---------------------------------------------------------------- the screenshot in the docs


def write_screenshot(path: str, width: int, height: int, *, mobile: bool = False) -> None:
    """Render the busy agent after its brownout and save the PNG."""
    agent = Agent(story=True)
    with (
        serving(agent.snapshot, clock=agent.clock, history=agent.history) as srv,
        tempfile.TemporaryDirectory() as home,
    ):
        b = Browser(CHROMIUM, os.path.join(home, "profile"), os.path.join(home, "log"))
        try:
            tab = b.new_page(width, height, mobile=mobile)
            tab.goto(base_url(srv, "/"))
            tab.wait_for(LIVE_WITH_RATES, "LIVE with rates")
            tab.wait_for(CHARTS_DRAWN, "the charts")
            Path(path).write_bytes(tab.screenshot())
        finally:
            b.close()


if __name__ == "__main__":
    # python tests/test_page.py docs/  ->  docs/status-page.png and docs/status-page-phone.png
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    write_screenshot(str(out / "status-page.png"), 1024, 1050)
    write_screenshot(str(out / "status-page-phone.png"), 390, 1900, mobile=True)
