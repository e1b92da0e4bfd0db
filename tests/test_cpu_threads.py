"""How many CPU threads the scoring command's networks use, and OpenMP's wait policy.

The command runs beside Slicer or other work: its networks use only the CPUs that are not
busy (load average), never more than PyTorch would, and never against the user's own
``OMP_NUM_THREADS``; OpenMP threads that wait sleep instead of spinning.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from CoronaryCalciumDINOLib.pipeline import device

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cpus, load, expected", [(8, 0.3, 8), (8, 2.6, 5), (2, 1.4, 1), (2, 0.4, 2), (2, 5.0, 1), (4, 0.0, 4)])
def test_free_cpus_are_the_usable_cpus_less_the_load(monkeypatch, cpus, load, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert device.free_cpus() == expected


def test_free_cpus_without_a_load_average(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)

    def no_load():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", no_load)
    assert device.free_cpus() == 3


def test_networks_use_the_free_cpus_unless_the_user_chose(monkeypatch):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(device, "free_cpus", lambda: 2)
        assert device.use_free_cpus() == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(device, "free_cpus", lambda: 16)  # never more than torch would use
        assert device.use_free_cpus() == 2
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        monkeypatch.setattr(device, "free_cpus", lambda: 1)
        assert device.use_free_cpus() == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_the_command_lets_openmp_threads_sleep():
    code = ("import os, sys\nfrom CoronaryCalciumDINOLib.cli import main\nmain([])\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(ROOT / "CoronaryCalciumDINO"), timeout=120)
    assert run.stdout.strip().splitlines()[-1] == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the environment's choice stays
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(ROOT / "CoronaryCalciumDINO"), timeout=120)
    assert run.stdout.strip().splitlines()[-1] == "ACTIVE"
