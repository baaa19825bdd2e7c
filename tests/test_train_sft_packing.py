"""SFT packing (MP_SFT_PACKING=true): samples packed into one sequence do not see each other.

The packed item and the samples one per item go through the trainer's own forward step
(``_forward_step``: ``PackedSeqParams`` from ``cu_seqlens``, the SDPA packed mask) on tiny
Qwen2.5: every sample's logits are the ones it gets alone, and the per-token loss and the
gradient of the packed step equal those of the unpacked step over the same samples.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pai_patch.data.sft import SftDataset
from pai_patch.models import get_family
from pai_patch.models.base import Runtime
from pai_patch.parallel import model_parallel
from pai_patch.training.loop import _forward_step
from tests.conftest import CORPUS, ROOT
from tests.test_recipes_seeds import qwen_pretrain

SEQ = 48
LENGTHS = (13, 21, 9)  # tokens per sample; a sample fills length - 1 positions, 40 of 48 in all
PAD = 0


def _samples() -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids and loss masks; the prompt (first 4 tokens) is masked, as SFT does."""
    rng = np.random.default_rng(7)
    out = []
    for n in LENGTHS:
        mask = np.ones(n, np.uint8)
        mask[:4] = 0
        out.append((rng.integers(1, 2000, n), mask))
    return out


def _dataset(groups: list[list[int]], packed: bool) -> SftDataset:
    samples = _samples()
    return SftDataset(lambda i: samples[i], [np.array(g) for g in groups], SEQ, PAD, packed)


@pytest.fixture(scope="module")
def model():  # noqa: ANN201 - a megatron GPTModel
    family = get_family("qwen2_5")
    rt = Runtime(seq_length=SEQ)
    with model_parallel(rt):
        torch.manual_seed(0)
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(0)
        gpt = family.build(family.size("tiny"), rt)
        gpt.config.calculate_per_token_loss = True
        yield gpt


def _step(model, item: dict[str, torch.Tensor], *, logits: bool = False) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
    """(per-token loss sum, token count) of one micro-batch, or its logits [s, vocab]."""
    batch = {k: v.unsqueeze(0) for k, v in item.items()}
    if logits:
        batch["labels"] = None
        with torch.no_grad():
            return (model(batch["tokens"], batch["position_ids"], None,
                          packed_seq_params=_packed(batch))[0],)
    output, loss_func = _forward_step(iter([batch]), model)
    total, count, _ = loss_func(output)
    return total, count


def _packed(batch: dict[str, torch.Tensor]):  # noqa: ANN202 - PackedSeqParams or None, as _forward_step builds it
    if "cu_seqlens" not in batch:
        return None
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = torch.unique_consecutive(batch["cu_seqlens"][0].to(torch.int32))
    return PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=SEQ, max_seqlen_kv=SEQ)


def test_packed_samples_get_the_logits_they_get_alone(model) -> None:  # noqa: ANN001
    packed = _dataset([[0, 1, 2]], packed=True)[0]
    assert packed["cu_seqlens"][:4].tolist() == [0, 12, 32, 40]
    together = _step(model, packed, logits=True)[0]
    start = 0
    for i, n in enumerate(LENGTHS):
        alone = _step(model, _dataset([[i]], packed=False)[0], logits=True)[0]
        positions = n - 1
        diff = (together[start:start + positions] - alone[:positions]).abs().max().item()
        assert diff < 1e-4, f"sample {i}: logits differ by {diff} packed vs alone"
        start += positions


def test_packing_without_the_mask_would_leak(model) -> None:  # noqa: ANN001
    """The check above can fail: without cu_seqlens the second sample attends to the first."""
    packed = _dataset([[0, 1, 2]], packed=True)[0]
    unmasked = {k: v for k, v in packed.items() if k != "cu_seqlens"}
    leaked = _step(model, unmasked, logits=True)[0]
    alone = _step(model, _dataset([[1]], packed=False)[0], logits=True)[0]
    assert (leaked[12:32] - alone[:20]).abs().max().item() > 1e-2


def test_packed_step_has_the_per_token_loss_and_gradient_of_the_unpacked_step(model) -> None:  # noqa: ANN001
    def loss_and_grads(items: list[dict[str, torch.Tensor]]) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        total, count = torch.zeros(()), torch.zeros((), dtype=torch.int)
        for item in items:
            t, c = _step(model, item)
            total, count = total + t, count + c
        (total / count).backward()
        return (total / count).item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    packed_loss, packed_grads = loss_and_grads([_dataset([[0, 1, 2]], packed=True)[0]])
    flat = _dataset([[0], [1], [2]], packed=False)
    flat_loss, flat_grads = loss_and_grads([flat[i] for i in range(3)])
    assert abs(packed_loss - flat_loss) < 1e-5
    worst = max((packed_grads[n] - flat_grads[n]).abs().max().item() for n in flat_grads)
    assert worst < 1e-5


@pytest.mark.slow
def test_seed_launcher_trains_packed_sft(tmp_path: Path) -> None:
    """MP_SFT_PACKING=true through the Qwen2.5 seed launcher: packed items reach the trainer, loss is finite."""
    data = str(CORPUS / "sft_train.json")
    args = qwen_pretrain("tiny", data, str(tmp_path / "out"))
    args[15], args[22], args[23] = "true", "3", "1"  # SFT, 3 iterations, 1 of warmup
    result = subprocess.run(["sh", "recipes/qwen2_5/run_mcore_qwen.sh", *args], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "MP_DATASET_TYPE": "raw", "MP_SFT_PACKING": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sft.data.pack=true" in result.stdout
    rows = [json.loads(x) for x in (tmp_path / "out" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    job = yaml.safe_load((tmp_path / "out" / "sft" / "job.yaml").read_text())
    assert job["data"]["pack"] is True and job["train"]["micro_batch_size"] == 1
