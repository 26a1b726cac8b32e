"""The technician endpoint's URL paths, in one place.

The server (agent/http.py), the `edge-agent status` client (agent/status.py)
and the loop's start-up log all name these; this module imports nothing, so
any of them can import it without pulling in the others (the status client
stays free of Bottle). The backpressure path is the contract's (INTERFACE.md,
"Technician endpoint"); the status page's script asks for it relative to the
page (agent/static/status.js, checked equal in tests/test_page.py).
"""

BACKPRESSURE_PATH = "/api/v1/gateway/backpressure"
# The status page's charts: the last 10 minutes (agent/history.py).
HISTORY_PATH = "/api/v1/gateway/history"
HEALTHZ_PATH = "/healthz"
METRICS_PATH = "/metrics"
STATUS_PAGE_PATH = "/"

__all__ = ["BACKPRESSURE_PATH", "HEALTHZ_PATH", "HISTORY_PATH", "METRICS_PATH", "STATUS_PAGE_PATH"]
