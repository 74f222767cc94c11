"""DDP behaviour of the shared core, with two CPU processes on the gloo backend (nnU-Net's own DDP needs CUDA).

Checks what our trainers add on top of nnU-Net's DDP: the EMA teacher built from and updated by a DDP-wrapped
student stays identical on every rank and equals the EMA of the synchronised student, and logged terms are averaged
over workers.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nnunet_semi.core.teacher import EMATeacher
from nnunet_semi.core.trainer import mean_over_workers


def _worker(rank: int, world_size: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # same initial weights on both ranks, as DDP requires
    student = DistributedDataParallel(nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4), nn.Conv2d(4, 2, 1)))
    teacher = EMATeacher(student, decay=0.9)
    expected = [p.detach().clone() for p in student.module.parameters()]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    torch.manual_seed(100 + rank)  # different data on each rank
    for step in range(1, 4):
        optimizer.zero_grad()
        student(torch.randn(2, 1, 8, 8)).square().mean().backward()
        optimizer.step()
        teacher.update(student, step)
        decay = min(1 - 1 / (step + 1), 0.9)
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, student.module.parameters())]
    flat = torch.cat([p.flatten() for p in teacher.module.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    results[rank] = {
        "teachers_identical": all(torch.equal(gathered[0], g) for g in gathered),
        "teacher_is_ema": all(torch.allclose(t, e, atol=1e-6) for t, e in zip(teacher.module.parameters(), expected)),
        "mean_over_workers": mean_over_workers([float(rank), float(rank)]),
    }
    dist.destroy_process_group()


def test_ema_teacher_and_logging_under_ddp(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    for rank in range(2):
        assert results[rank]["teachers_identical"]
        assert results[rank]["teacher_is_ema"]
        assert results[rank]["mean_over_workers"] == 0.5
