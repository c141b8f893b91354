"""Benchmark: how soon a live migration shows in the web console (goal: within 1 s).

    python -m bench.console [--hosts 3] [--vms 2] [--moves 20]

A lab of ``--hosts`` hypervisors; the console's hosts page open in headless Chromium
(Debian's, driven by Playwright). Each move's delay is from the moment the controller
recorded it (the ``vm-moved`` event's time) to the moment its line appeared on the page's
timeline (a MutationObserver in the page). The baseline, in the same run: the same events
as a plain client of ``/v1/events/stream`` receives them, the floor the page builds on
(the stream polls the database every 0.2 s; the page then fetches the redrawn panel).
Prints a table; asserts nothing. Needs root, OVS and chromium.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from vfence.mininet_topos.browser import epoch, launch, wait_for_stream
from vfence.mininet_topos.datacenter import vm
from vfence.mininet_topos.lab import Lab
from vfence.mininet_topos.migration import migrate

from .migration import pct

WATCH = """
window.__sseOpen = false; window.__events = {};
document.addEventListener('htmx:sseOpen', () => { window.__sseOpen = true; });
new MutationObserver(() => {
  for (const li of document.querySelectorAll('#timeline li[data-event]')) {
    if (!(li.dataset.event in window.__events)) window.__events[li.dataset.event] = Date.now();
  }
}).observe(document, {subtree: true, childList: true});
"""


def _listen(api: str, seen: dict[int, float], stop: threading.Event) -> None:
    """A plain event-stream client: when each vm-moved event arrived (epoch seconds)."""
    try:
        with httpx.stream("GET", api + "/v1/events/stream?type=vm-moved", timeout=None) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen[json.loads(line[6:])["id"]] = time.time()
                if stop.is_set():
                    return
    except httpx.HTTPError:  # the lab went down under it
        return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--vms", type=int, default=2)
    ap.add_argument("--moves", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vfence-console-"))
    plan = [vm(f"v{h}x{i}", h, "blue", index=i) for h in range(1, args.hosts + 1)
            for i in range(1, args.vms + 1)]
    lab = Lab(args.hosts, 1, plan, db_url=f"sqlite:///{tmp}/db.sqlite", workdir=tmp,
              of_port=6698, api_port=8098)
    stream: dict[int, float] = {}
    stop = threading.Event()
    try:
        lab.up()
        print(f"lab: {args.hosts} hosts x {args.vms} VMs; {args.moves} moves")
        threading.Thread(target=_listen, args=(lab.api, stream, stop), daemon=True).start()
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page()
            page.add_init_script(WATCH)
            page.goto(lab.api + "/")
            wait_for_stream(page)
            at = {q.name: q.host for q in plan}
            for i in range(args.moves):
                q = plan[(i * 5) % len(plan)]
                at[q.name] = at[q.name] % args.hosts + 1
                migrate(lab.net, q, f"hv{at[q.name]}", remove_old_after=0.3)
                time.sleep(1.5)  # the page and the stream have it by now (goal: 1 s)
            shown = {int(k): v / 1000 for k, v in page.evaluate("window.__events").items()}
            browser.close()
        stop.set()
        moves = httpx.get(lab.api + "/v1/events?type=vm-moved&limit=1000", timeout=30).json()
    finally:
        lab.down()
    page_ms = [(shown[e["id"]] - epoch(e["ts"])) * 1000 for e in moves if e["id"] in shown]
    stream_ms = [(stream[e["id"]] - epoch(e["ts"])) * 1000 for e in moves if e["id"] in stream]
    print(f"\n{len(moves)} moves recorded; on the page: {len(page_ms)}, on the stream: "
          f"{len(stream_ms)}\n")
    print("| from the move recorded to | p50 | p95 | max | goal |")
    print("|---|---|---|---|---|")
    for name, xs in (("its line on the console's page", page_ms),
                     ("its event at a plain /v1/events/stream client (baseline)", stream_ms)):
        if xs:
            print(f"| {name} | {pct(xs, .5):.0f} ms | {pct(xs, .95):.0f} ms | "
                  f"{max(xs):.0f} ms | < 1000 ms |")


if __name__ == "__main__":
    main()
