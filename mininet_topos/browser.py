"""The console in a real browser, for the lab tests and bench.console: Debian's Chromium,
driven by Playwright (a lab extra, imported by the caller), and the time of an event."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright never downloads a browser here
# as root, on a machine whose outside network is closed (/work/.library/env: python.md)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch(playwright: Any) -> Any:
    """A headless Chromium from ``sync_playwright()``'s object."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def epoch(ts: str) -> float:
    """An event's ``ts`` as the API writes it (RFC 3339, UTC) in epoch seconds."""
    t = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def wait_for_stream(page: Any, timeout: float = 10.0) -> None:
    """Until the page's event stream is open (``window.__sseOpen``, set by console.js).
    Polled from here with ``page.evaluate`` (DevTools' evaluate, which the page's CSP
    does not govern): Playwright's ``wait_for_function`` polls inside the page with
    ``new Function``, which the console's CSP refuses when the first check is false."""
    end = time.monotonic() + timeout
    while not page.evaluate("window.__sseOpen === true"):
        if time.monotonic() > end:
            raise TimeoutError(f"the page's event stream did not open in {timeout} s")
        time.sleep(0.05)
