"""CPU threads: torch's intra-op threads get the cores the data-loader workers leave; workers run one thread."""

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


@pytest.mark.parametrize("cores, workers, expected", [(2, 2, 1), (2, 0, 2), (2, 4, 1), (8, 2, 6), (1, 0, 1)])
def test_threads_are_the_cores_left_by_the_workers(monkeypatch, threads_restored, cores, workers, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    assert size_cpu_threads(workers) == expected and torch.get_num_threads() == expected


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
