"""The main job: `vfence lab` (what `make demo` runs) succeeds and shows the matrix."""

from __future__ import annotations

import subprocess
import sys


def test_lab_demo_runs_and_every_cell_matches(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "vfence", "lab", "--hosts", "2", "--vms", "2",
         "--db", f"sqlite:///{tmp_path}/lab.db"],
        capture_output=True, text=True, timeout=240,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every VM reaches exactly its own segment" in r.stdout
    assert "reachability" in r.stdout and "vm21" in r.stdout
    assert "migration of vm11: hv1 -> hv2" in r.stdout
    assert "the network followed the VM" in r.stdout


def test_lab_refuses_bad_flags():
    r = subprocess.run([sys.executable, "-m", "vfence", "lab", "--hosts", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--hosts" in r.stderr
