"""What a new user does after ``pip install <wheel>`` (``make test`` runs this file with the
wheel installed, not editable, in a fresh venv): serve, a valid policy, an invalid one, and
no top-level modules of ours in their environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import _free_port

# the example policy that ships in the wheel, and the same with one port out of range
GOOD = yaml.safe_load(resources.files("vfence.mininet_topos").joinpath("finance.yaml")
                      .read_text())
BAD = {**GOOD, "rules": [{**GOOD["rules"][0], "ports": "70000"}, *GOOD["rules"][1:]]}


@pytest.fixture
def served(tmp_path):
    vfence = Path(sys.executable).with_name("vfence")  # the console script pip installed
    api = _free_port()
    proc = subprocess.Popen([str(vfence), "serve", "--db", f"sqlite:///{tmp_path}/v.db",
                             "--api-port", str(api), "--ofp-port", str(_free_port()),
                             "--ofp-host", "127.0.0.1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    base = f"http://127.0.0.1:{api}"
    try:
        for _ in range(150):
            try:
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("vfence serve did not answer /v1/health within 30 s")
        yield base
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "Traceback" not in out and "Eventlet" not in out, out


def test_the_console_script_serves_and_judges_a_policy(served):
    ok = httpx.put(f"{served}/v1/policy", json=GOOD, timeout=30)
    assert ok.status_code == 200, ok.text
    refused = httpx.put(f"{served}/v1/policy", json=BAD, timeout=30)
    assert refused.status_code == 422, refused.text
    assert "rules[0]" in refused.text and "70000" in refused.text, refused.text
    rules = httpx.get(f"{served}/v1/rules", timeout=10).json()
    assert [r["name"] for r in rules] == [r["name"] for r in GOOD["rules"]]
    assert rules[0]["ports"] == [[8443, 8443]], "the refused policy changed something"


def test_the_installed_console_serves_its_pages_and_assets(served):
    """Templates and scripts come from the wheel: nothing from a CDN."""
    assert httpx.put(f"{served}/v1/policy", json=GOOD, timeout=30).status_code == 200
    policy = httpx.get(f"{served}/policy", timeout=10)
    assert policy.status_code == 200 and 'data-verdict="isolated"' in policy.text
    assert "http" not in policy.text.split("</head>")[0]  # every asset from this server
    static = resources.files("vfence.controller.console").joinpath("static")
    for asset in ("htmx.min.js", "htmx-sse.min.js", "console.css", "console.js"):
        r = httpx.get(f"{served}/static/{asset}", timeout=10)
        assert r.status_code == 200, asset
        assert r.content == static.joinpath(asset).read_bytes() != b"", asset


def test_our_folders_are_not_top_level_modules(tmp_path):
    import vfence

    if os.environ.get("VFENCE_INSTALLED"):
        assert "site-packages" in vfence.__file__, f"testing a checkout: {vfence.__file__}"
    for name in ("controller", "apps", "migrations", "mininet_topos", "schemas"):
        r = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr, (name, r.stderr)
    r = subprocess.run([sys.executable, "-c", "import vfence.controller.cli"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
