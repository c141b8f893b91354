"""The console in a real browser, for the lab tests and bench.console: Debian's Chromium,
driven by Playwright (a lab extra, imported by the caller), and the time of an event."""

from __future__ import annotations

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
