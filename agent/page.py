"""`GET /`: the technician's status page, one self-contained HTML document.

The page itself is package data in agent/static/: `status.html` (the markup),
`status.css` and `status.js`. status.html is a working document on its own
(open it from the directory and it loads the other two); this module owns
turning it into the one document served, and the headers it is served with. It
promises:

- No external asset of any kind (the box has no internet, and a maintenance
  laptop may have none either): every `<link rel="stylesheet" href="NAME">` and
  `<script src="NAME"></script>` of status.html naming a file of agent/static
  is replaced by that file's text inline, the favicon is a data URL (otherwise
  every load asks for /favicon.ico, a 404 here), and the Content-Security-Policy
  allows nothing but those inline scripts and styles (by hash, computed from
  the text served) and fetches to the same origin. A page that tried to load
  anything else would be blocked, not silently slow.
- Built once, at import: a missing or malformed file fails the agent's start
  (and the tests), never a request.
- The page is static: nothing from the agent is interpolated on the server.
  The script polls `api/v1/gateway/backpressure` (relative, so it also works
  behind a path-prefixing proxy) once a second and `api/v1/gateway/history`
  every 5 s (only the samples after the last it has), and writes every value
  it shows with `textContent`, never as markup, so an agent id or a reject
  reason cannot inject anything. The charts are SVG elements built with
  createElementNS, their paths made of numbers only.
- It reads the JSON document the way `edge-agent status` does (status.py):
  only the contract's fields are required; everything else is optional and
  shows as "?" or "n/a" when missing, so one page works with older and newer
  agents, and fields other components add (the alert lane, stuck
  subscribers, write-through, the ingest path) appear when reported.
- What a technician must see in seconds is said in words, not colour alone:
  the agent's alarms by name with what to do (agent/alarms.py, the same list
  as `edge-agent status` and /metrics), NOT CONNECTED, DROPPED, and STALE when
  the agent stops answering (the last values stay, dimmed and marked STALE).

Nothing is computed from the page's own sequence of answers: every rate, the
critical latency of the last minute and the alarms' trends come from the
agent's history (agent/history.py), so the first paint already has them and
every rate on the screen covers the same window. The page only keeps the
charts' columns (10 minutes, merged from the 5-second updates) and says when
the agent restarted while it was open.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.resources
import re
from collections.abc import Callable

STATIC_PACKAGE = "agent"
STATIC_DIR = "static"
PAGE_FILE = "status.html"

# The references status.html may make to its own files: exactly these forms,
# one per line, a plain file name. Anything else that loads a resource is left
# as written, and the CSP blocks it (tests/test_page.py checks there is none).
_STYLESHEET = re.compile(r'<link rel="stylesheet" href="([A-Za-z0-9_.-]+)">')
_SCRIPT = re.compile(r'<script src="([A-Za-z0-9_.-]+)"></script>')


@dataclasses.dataclass(frozen=True)
class Page:
    """The document as served, and what its CSP must allow."""

    html: str
    styles: tuple[str, ...]  # the text of each inline <style>, in document order
    scripts: tuple[str, ...]  # the text of each inline <script>, in document order


def read_static(name: str) -> str:
    """The text of agent/static/`name` (UTF-8), wherever the package is installed."""
    return (
        importlib.resources.files(STATIC_PACKAGE)
        .joinpath(STATIC_DIR)
        .joinpath(name)
        .read_text(encoding="utf-8")
    )


def inline_assets(template: str, read: Callable[[str], str] = read_static) -> Page:
    """`template` with each stylesheet and script reference replaced by the
    text of the file it names (`read(name)`)."""
    styles: list[str] = []
    scripts: list[str] = []

    def inline(m: re.Match[str], tag: str, into: list[str]) -> str:
        # The leading newline keeps the file's first line on a line of its own.
        text = "\n" + read(m.group(1))
        if f"</{tag}" in text.lower():
            raise ValueError(f"{m.group(1)}: contains '</{tag}', which would end it early")
        into.append(text)
        return f"<{tag}>{text}</{tag}>"

    def style(m: re.Match[str]) -> str:
        return inline(m, "style", styles)

    def script(m: re.Match[str]) -> str:
        return inline(m, "script", scripts)

    html = _SCRIPT.sub(script, _STYLESHEET.sub(style, template))
    return Page(html=html, styles=tuple(styles), scripts=tuple(scripts))


def csp_hash(source: str) -> str:
    """The CSP source expression that allows exactly this inline text."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy(page: Page) -> str:
    """Only this page's own scripts and styles run, and it may only talk to its
    own origin: a stray external reference is blocked (and visible in the
    console) instead of hanging on a box with no internet."""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + (" ".join(csp_hash(s) for s in page.scripts) or "'none'"),
            "style-src " + (" ".join(csp_hash(s) for s in page.styles) or "'none'"),
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


PAGE = inline_assets(read_static(PAGE_FILE))
HTML = PAGE.html
BODY_BYTES = HTML.encode("utf-8")
CONTENT_SECURITY_POLICY = content_security_policy(PAGE)

HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
