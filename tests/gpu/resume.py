"""Train a tiny model in the trainer, save, keep going; resume a fresh trainer from the save.

Shared by the GPU test (bf16 on CUDA) and its CPU twin in tests/test_image_gpu_bench.py:
a resumed run must take the steps the unbroken run took, which is what the distributed
optimizer's checkpoint (fp32 main weights, Adam moments and step counts) has to carry.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.gpu import Shape, job_config, random_batch


@dataclass
class Resumed:
    #: loss of the first step
    first_loss: float
    #: losses of the steps after the save, in the unbroken run and in the resumed one
    straight: list[float]
    resumed: list[float]
    #: dtypes of the model's parameters and the device they live on
    param_dtypes: set[torch.dtype]
    device: str
    #: iteration the fresh trainer resumed at
    restored_iteration: int


def _teardown() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def train_save_resume(family: str, output_dir: Path, *, before: int = 3, after: int = 2, seq_length: int = 64,
                      micro_batch: int = 2, lr: float = 1e-3) -> Resumed:
    """``before`` steps, save, ``after`` steps; then a new trainer resumes and takes ``after`` steps."""
    from pai_patch.models import get_family
    from pai_patch.training.loop import Trainer

    size = get_family(family).size("tiny")
    job = job_config(Shape(family, "tiny", family, micro_batch), size, micro_batch, seq_length, before + after,
                     "false", str(output_dir))
    job.optim.lr, job.optim.min_lr = lr, lr
    try:
        trainer = Trainer(job)
        device = next(trainer.model[0].parameters()).device
        iterators = [itertools.repeat(random_batch(size.vocab_size, micro_batch, seq_length, device))]
        first = [trainer.train_step(iterators)["loss"] for _ in range(before)][0]
        trainer.iteration = before
        trainer.save()
        straight = [trainer.train_step(iterators)["loss"] for _ in range(after)]
        dtypes = {p.dtype for p in trainer.model[0].parameters()}
    finally:
        _teardown()
    try:
        again = Trainer(job)
        resumed = [again.train_step(iterators)["loss"] for _ in range(after)]
        iteration = again.iteration
    finally:
        _teardown()
    return Resumed(first, straight, resumed, dtypes, str(device), iteration)
