"""CPU threads: torch's intra-op threads get the cores the process may use (those the data-loader workers leave
when OpenMP threads spin); OpenMP threads sleep when seg is imported first; workers run one thread."""

import os
import subprocess
import sys

import cv2
import pytest
import torch
from torch.utils.data import DataLoader

from seg.data import worker_init_fn
from seg.engine.device import size_cpu_threads


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("policy", ["PASSIVE", "passive", "ACTIVE", None])
@pytest.mark.parametrize("cores, workers, left", [(2, 2, 1), (2, 0, 2), (2, 4, 1), (8, 2, 6), (1, 0, 1)])
def test_threads_are_the_usable_cores_or_those_the_workers_leave(monkeypatch, threads_restored, policy, cores,
                                                                 workers, left):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    expected = cores if policy in ("PASSIVE", "passive") else left  # sleeping threads: every core
    assert size_cpu_threads(workers) == expected and torch.get_num_threads() == expected


@pytest.mark.parametrize("code, preset, expected", [
    ("import seg, torch", None, "PASSIVE"),    # seg first: set before libgomp reads it
    ("import seg, torch", "active", "active"),  # the user's value is kept
    ("import torch, seg", None, None),         # too late to matter: left unset (threads then spin)
])
def test_seg_makes_openmp_threads_sleep_when_imported_before_torch(code, preset, expected):
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    printed = subprocess.run([sys.executable, "-c", f"{code}, os; print(os.environ.get('OMP_WAIT_POLICY'))"],
                             capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert printed == str(expected)


def test_omp_num_threads_wins(monkeypatch, threads_restored):
    torch.set_num_threads(3)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert size_cpu_threads(2) == 3 and torch.get_num_threads() == 3


class ThreadsSeen(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return torch.tensor([torch.get_num_threads(), cv2.getNumThreads()])


def test_workers_run_one_thread():
    seen = torch.cat(list(DataLoader(ThreadsSeen(), num_workers=2, worker_init_fn=worker_init_fn)))
    assert seen.tolist() == [[1, 1], [1, 1]]  # torch: 1; OpenCV: setNumThreads(0) runs its loops sequentially
