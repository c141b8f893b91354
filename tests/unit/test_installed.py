"""The package as users install it (a wheel, not editable): whatever it reads at run time
must ship inside it. Built from this checkout, installed into an empty directory, run
from somewhere else, with this environment's dependencies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(work), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = work.glob("vfence-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("schemas/policy.schema.json", "mininet_topos/finance.yaml",
                   "mininet_topos/rarp.py", "migrations/script.py.mako",
                   "controller/console/templates/base.html",
                   "controller/console/static/htmx.min.js",
                   "controller/console/static/htmx-sse.min.js",
                   "controller/console/static/console.css",
                   "controller/console/static/console.js"):
        assert f"vfence/{needed}" in names, f"vfence/{needed} is not in the wheel"
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"vfence"}, f"the wheel installs more than its own namespace: {top}"
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    return site


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_installed_package_reads_only_what_it_ships(installed, tmp_path):
    where = _run(installed, tmp_path, "-c", "import vfence.controller, vfence.schemas; "
                 "print(vfence.controller.__file__); print(vfence.schemas.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(installed)) for line in where.stdout.split()), where.stdout
    for name in ("controller", "apps", "schemas", "migrations", "mininet_topos"):
        clash = _run(installed, tmp_path, "-c", f"import {name}")
        assert clash.returncode == 1 and "ModuleNotFoundError" in clash.stderr, name
    finance = installed / "vfence" / "mininet_topos" / "finance.yaml"
    ok = _run(installed, tmp_path, "-m", "vfence", "policy", "check", str(finance))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"segments": [{"name": "s"}], "rules": [{"name": "r"}]}))
    refused = _run(installed, tmp_path, "-m", "vfence", "policy", "check", str(bad))
    assert refused.returncode == 1 and "rules[0]" in refused.stdout + refused.stderr
    db = f"sqlite:///{tmp_path}/v.db"
    up = _run(installed, tmp_path, "-m", "vfence", "db", "upgrade", "--db", db)
    assert up.returncode == 0, up.stdout + up.stderr


def test_docker_compose_command_passes_serves_start_up_checks(installed, tmp_path,
                                                             postgres_url):
    """Docker cannot run here: read the compose file and the Dockerfile, then run the
    same command line and environment on the installed wheel through ``serve --check``
    (the database address is the suite's PostgreSQL instead of the ``db`` service)."""
    import re

    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["vfence"]
    copied = re.findall(r"^COPY (\S+) ", (ROOT / "Dockerfile").read_text(), re.M)
    needed = ["src"] + [link.name for link in (ROOT / "src" / "vfence").iterdir()
                        if link.is_symlink()]
    for folder in needed:
        assert folder in copied, f"the Dockerfile does not copy {folder}, which the wheel needs"
    env = {k: str(v) for k, v in service["environment"].items()}
    assert env["VFENCE_API_TOKEN"].startswith("${VFENCE_API_TOKEN:?"), \
        "compose must refuse to start without a token"
    env["VFENCE_API_TOKEN"] = "a-token-the-operator-sets"
    env["VFENCE_DB"] = postgres_url
    cmd = ["-m", "vfence", *service["command"], "--check"]
    r = subprocess.run([sys.executable, *cmd], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(installed), **env), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "start-up checks passed" in r.stdout and "a-token" not in r.stdout
    assert "Eventlet" not in r.stderr and "Traceback" not in r.stderr
    del env["VFENCE_API_TOKEN"]  # what the compose file used to do: refused, exit 2
    r = subprocess.run([sys.executable, *cmd], cwd=tmp_path, capture_output=True, text=True,
                       env={k: v for k, v in dict(os.environ, PYTHONPATH=str(installed),
                                                   **env).items() if k != "VFENCE_API_TOKEN"},
                       timeout=120)
    assert r.returncode == 2 and "VFENCE_API_TOKEN" in r.stdout + r.stderr


def test_the_cluster_compose_file_passes_the_same_start_up_checks(installed, tmp_path,
                                                                  postgres_url):
    """docker-compose.cluster.yml: three members on one PostgreSQL. Each member's command
    line and environment pass ``serve --check`` on the installed wheel, as the single
    controller's do, and each is a cluster member with its own name and address."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    members = {k: v for k, v in compose["services"].items() if k.startswith("vfence-")}
    assert len(members) == 3
    names, ofports = set(), set()
    for key, service in members.items():
        env = {k: str(v) for k, v in service["environment"].items()}
        assert env["VFENCE_API_TOKEN"].startswith("${VFENCE_API_TOKEN:?")
        env["VFENCE_API_TOKEN"] = "a-token-the-operator-sets"
        env["VFENCE_DB"] = postgres_url
        r = subprocess.run([sys.executable, "-m", "vfence", *service["command"], "--check"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONPATH=str(installed), **env))
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"as cluster member {key} at http://{key}:8080" in r.stdout, r.stdout
        names.add(key)
        ofports.add(service["ports"][0].split(":")[0])
    assert len(names) == 3 and len(ofports) == 3
