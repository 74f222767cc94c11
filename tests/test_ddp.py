"""DDP behaviour of the shared core, with two CPU processes on the gloo backend (nnU-Net's own DDP needs CUDA).

Checks what our trainers add on top of nnU-Net's DDP: the EMA teacher built from and updated by a DDP-wrapped
student stays identical on every rank and equals the EMA of the synchronised student, logged terms are averaged
over workers, and batch statistics (SCDL's anchors, class-balanced pseudo-label thresholds) are the global batch's.
"""
from __future__ import annotations

import time

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


def _tiny_unet():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    return PlainConvUNet(1, 2, (4, 8), nn.Conv2d, 3, (1, 2), 1, 3, (1,), norm_op=nn.InstanceNorm2d,
                         norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, deep_supervision=False)


def _sra_like_loss(network, forward, x_mixed, x_synthetic, x_real):
    """SRA-Seg's pattern: one (DDP) forward of the mixed batch plus encoder passes on the unwrapped network."""
    from nnunet_semi.trainers.sra_seg import decoder_feature_statistics, similarity_alignment_loss
    with torch.no_grad():
        real = decoder_feature_statistics(network, x_real)
    sa = similarity_alignment_loss(decoder_feature_statistics(network, x_synthetic), real, torch.tensor([0, 1]))
    return forward(x_mixed).square().mean() + sa


def _encoder_gradient_worker(rank: int, world_size: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    network = _tiny_unet()
    reference = _tiny_unet()
    reference.load_state_dict(network.state_dict())
    ddp = DistributedDataParallel(network)
    torch.manual_seed(10 + rank)
    inputs = [torch.randn(2, 1, 8, 8) for _ in range(3)]
    _sra_like_loss(ddp, ddp, *inputs).backward()
    _sra_like_loss(reference, reference, *inputs).backward()  # this rank's own gradient, no DDP
    results[rank] = gradients_are_rank_averages(network, reference, world_size)
    dist.destroy_process_group()


def gradients_are_rank_averages(network: nn.Module, reference: nn.Module, world_size: int) -> bool:
    """Whether ``network``'s (DDP) gradients equal the mean over ranks of ``reference``'s (each rank's own)."""
    expected = [p.grad.clone() for p in reference.parameters()]
    for g in expected:
        dist.all_reduce(g)
        g /= world_size
    return all(torch.allclose(p.grad, e, atol=1e-6) for p, e in zip(network.parameters(), expected))


def test_encoder_passes_outside_the_ddp_forward_get_averaged_gradients(tmp_path):
    """The SA loss uses the unwrapped encoder next to the DDP forward; DDP must still average all gradients."""
    results = mp.Manager().dict()
    mp.spawn(_encoder_gradient_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    assert results[0] and results[1]


def _extra_module_worker(rank: int, world_size: int, init_file: str, results) -> None:
    """An extra module wrapped as the base trainer wraps it gets gradients averaged over ranks."""
    from nnunet_semi.core.trainer import wrap_for_ddp
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    wrapped = wrap_for_ddp(module, torch.device("cpu"), rank)
    torch.manual_seed(10 + rank)
    x = torch.randn(6, 3)
    wrapped(x).square().mean().backward()
    grads = [p.grad.clone() for p in wrapped.parameters()]
    gathered = [[torch.zeros_like(g) for _ in range(world_size)] for g in grads]
    for g, out in zip(grads, gathered):
        dist.all_gather(out, g)
    results[rank] = all(torch.equal(out[0], out[1]) for out in gathered)
    dist.destroy_process_group()


def test_extra_modules_are_ddp_wrapped_like_the_network(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_extra_module_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    assert results[0] and results[1]


def _scdl_loss(network, forward, x, labels, anchors=None):
    """SCDL's pattern: the DDP forward returns logits and tokens; E2P/P2E use the proxies outside the forward, SAC
    uses anchors from encoder passes of the unwrapped network (all-reduced under DDP)."""
    from nnunet_semi.components.class_distribution import (
        embedding_to_proxy_loss,
        proxy_to_embedding_loss,
        semantic_anchor_loss,
        semantic_anchors,
    )
    torch.manual_seed(5)  # the same prior draws in the DDP and the reference forward
    logits, tokens = forward(x, return_tokens=True)
    means = network.proxies.means
    if anchors is None:
        anchors = semantic_anchors(network, x, labels, [0, 1], 2)
    loss = logits.square().mean() + embedding_to_proxy_loss(tokens, means) + proxy_to_embedding_loss(tokens, means)
    return loss + semantic_anchor_loss(means, *anchors), anchors


def _scdl_worker(rank: int, world_size: int, init_file: str, results) -> None:
    from nnunet_semi.components.class_distribution import SCDLNetwork
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    network = SCDLNetwork(_tiny_unet(), 2, token_dim=8, token_grid=2, prior_samples=3)
    with torch.no_grad():
        for projection in network.prior_projections:
            projection.weight.normal_()
    reference = SCDLNetwork(_tiny_unet(), 2, token_dim=8, token_grid=2, prior_samples=3)
    reference.load_state_dict(network.state_dict())
    ddp = DistributedDataParallel(network)
    torch.manual_seed(10 + rank)
    x = torch.randn(2, 1, 8, 8)
    labels = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    labels[:, :, :4] = rank  # class 1 only on rank 1: its anchor must still reach rank 0
    loss, anchors = _scdl_loss(network, ddp, x, labels)
    loss.backward()
    _scdl_loss(reference, reference, x, labels, anchors)[0].backward()
    expected = [p.grad.clone() for p in reference.parameters()]
    for g in expected:
        dist.all_reduce(g)
        g /= world_size
    gathered = [torch.zeros_like(anchors[0]) for _ in range(world_size)]
    dist.all_gather(gathered, anchors[0])
    results[rank] = {
        "gradients_averaged": all(torch.allclose(p.grad, e, atol=1e-6)
                                  for p, e in zip(network.parameters(), expected)),
        "anchors_identical": torch.equal(gathered[0], gathered[1]),
        "present": anchors[1].tolist(),
        "local_classes": sorted(torch.unique(labels).tolist()),
    }
    dist.destroy_process_group()


def test_scdl_proxies_and_anchors_under_ddp(tmp_path):
    """Proxies are parameters of the DDP-wrapped network (gradients averaged, also from the losses computed outside
    the forward); SAC's anchors are reduced over workers, so every rank sees every class of the global batch."""
    results = mp.Manager().dict()
    mp.spawn(_scdl_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    for rank in range(2):
        assert results[rank]["gradients_averaged"] and results[rank]["anchors_identical"]
        assert results[rank]["present"] == [True, True]
    assert results[0]["local_classes"] == [0]  # rank 0 has no class 1 but got its anchor


def _pseudo_label_worker(rank: int, world_size: int, init_file: str, folder: str, results) -> None:
    import numpy as np

    from nnunet_semi.components.pseudo_label_rounds import PseudoLabelStore, write_missing_pseudo_labels
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    store = PseudoLabelStore(folder)
    if rank == 1:  # a slow rank that looks only after rank 0 has begun writing must still split the same list
        listing = store.missing
        store.missing = lambda keys: (time.sleep(1.0), listing(keys))[1]
    keys = [f"case{i}" for i in range(7)]
    made = write_missing_pseudo_labels(store, keys, lambda key: (np.full((1, 2, 2), rank, np.uint8), {}, 1.0))
    results[rank] = {"made": made, "missing_after": store.missing(keys)}
    dist.destroy_process_group()


def test_pseudo_label_prediction_is_split_over_ranks_and_complete_on_all(tmp_path):
    """A round boundary under DDP: each rank makes a disjoint share of the missing pseudo-labels (one made before a
    kill is not made again) and every rank returns only once all exist."""
    import numpy as np

    from nnunet_semi.components.pseudo_label_rounds import PseudoLabelStore
    PseudoLabelStore(tmp_path / "round_1").write("case3", np.zeros((1, 2, 2), np.uint8), {}, 1.0)
    results = mp.Manager().dict()
    mp.spawn(_pseudo_label_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "round_1"), results), nprocs=2,
             join=True)
    made = [results[rank]["made"] for rank in range(2)]
    assert not set(made[0]) & set(made[1])
    assert sorted(made[0] + made[1]) == [f"case{i}" for i in range(7) if i != 3]
    assert results[0]["missing_after"] == results[1]["missing_after"] == []


def _global_batch_probabilities() -> torch.Tensor:
    """Three samples of six voxels, two classes, (3, 2, 1, 6); the last sample is all class 1."""
    background = torch.tensor([[0.99, 0.9, 0.8, 0.7, 0.05, 0.4],
                               [0.6, 0.55, 0.3, 0.2, 0.1, 0.45],
                               [0.01, 0.02, 0.03, 0.04, 0.35, 0.25]])
    return torch.stack((background, 1 - background), 1)[:, :, None]


def _class_balanced_steps(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-batch masks of ``batch`` (samples, 2, 1, 6) and, over two steps (``batch``, then its classes swapped),
    the running thresholds at momentum 0.5."""
    from nnunet_semi.components.pseudo_labels import RunningClassThresholds, class_balanced_pseudo_labels
    running = RunningClassThresholds(0.5)
    for step in (batch, batch.flip(1)):
        class_balanced_pseudo_labels(step, 0.5, running=running)
    return class_balanced_pseudo_labels(batch, 0.5)[1], running.values


def _class_balanced_worker(rank: int, world_size: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    local = _global_batch_probabilities()[:1] if rank == 0 else _global_batch_probabilities()[1:]  # uneven split
    results[rank] = _class_balanced_steps(local)
    dist.destroy_process_group()


def test_class_balanced_thresholds_are_taken_over_the_global_batch(tmp_path):
    """Two ranks holding one and two samples of a batch keep exactly the voxels one process keeps on the whole
    batch, although rank 0's class-0 voxels alone would get a higher threshold (0.9: two of its four; globally
    0.8: three of six); their running thresholds stay identical and equal one process's."""
    results = mp.Manager().dict()
    mp.spawn(_class_balanced_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    whole, running = _class_balanced_steps(_global_batch_probabilities())
    assert torch.equal(torch.cat((results[0][0], results[1][0])), whole)
    assert not torch.equal(results[0][0], _class_balanced_steps(_global_batch_probabilities()[:1])[0])
    assert torch.equal(results[0][1], running) and torch.equal(results[1][1], running)
