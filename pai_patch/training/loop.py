"""The training loop over megatron-core: model chunks, DDP, optimizer, schedules, checkpoints.

Loss is computed per token over the whole global batch (``calculate_per_token_loss``):
the gradient of a step is the same whatever the TP/PP/DP layout and micro-batching,
which is what lets a TP=2 or DP=2 run reproduce a single-process run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pai_patch.cli import CliError
from pai_patch.training.config import TrainConfig

log = logging.getLogger("pai_patch.train")


class NonFiniteLossError(RuntimeError, CliError):
    """The loss became NaN/Inf more often than the skip budget allows (one-line CLI error)."""


def _cpu_precision(rt):  # noqa: ANN001, ANN202
    """bf16/fp16 on a machine without CUDA train in fp32, and say so.

    CPU half-precision matmuls are emulated (slower than fp32), and the CPU runs are the ones
    compared exactly (layouts, resume, golden losses), which bf16 rounding would blur.  The
    seeds' `PR=bf16` commands therefore still run here, with fp32 numerics; on GPUs the
    requested precision is used.  (bf16 itself works on the CPU: ``tests/test_image_gpu_bench.py``
    trains, saves and resumes it with the distributed optimizer.)
    """
    if rt.precision in ("bf16", "fp16") and not torch.cuda.is_available():
        log.warning("no CUDA: %s requested, training in fp32 on CPU", rt.precision)
        return dataclasses.replace(rt, precision="fp32")
    return rt


def _seed_everything(seed: int) -> None:
    import numpy as np
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def _build_chunks(cfg: TrainConfig, rt) -> list[torch.nn.Module]:
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from pai_patch.models import get_family

    family = get_family(cfg.model.family)
    size = family.size(cfg.model.size)
    tconfig = family.transformer_config(size, rt)
    tconfig.calculate_per_token_loss = True
    # With PP=2 both neighbours are the same rank, and the interleaved (VP) schedule sends it an
    # activation and a gradient of one shape at once: batched isend/irecv pairs them in a different
    # order on each side and silently swaps them.  Megatron-LM's VP default (overlap_p2p_comm) uses
    # the unbatched ops, which pair them through two groups.
    tconfig.batch_p2p_comm = rt.vp is None
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer, average_in_collective=False,
    )
    chunks = []
    for vp_stage in range(rt.vp or 1):
        stage = vp_stage if rt.vp else None
        model = family.build(
            size, rt, config=tconfig, vp_stage=stage,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
        )
        if torch.cuda.is_available():
            model.cuda()
        chunks.append(DistributedDataParallel(config=tconfig, ddp_config=ddp_config, module=model,
                                              disable_bucketing=vp_stage > 0))
    return chunks


def _optimizer(cfg: TrainConfig, chunks: list[torch.nn.Module], rt) -> tuple[Any, Any]:
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o, t = cfg.optim, cfg.train
    offload = _optimizer_offload(o.offload)
    opt_config = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.beta1,
        adam_beta2=o.beta2, adam_eps=o.eps, clip_grad=o.clip_grad, bf16=rt.precision in ("bf16", "fp8"),
        fp16=rt.precision == "fp16", params_dtype=rt.params_dtype,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        optimizer_cpu_offload=offload, optimizer_offload_fraction=_offload_fraction(o.offload) if offload else 0.0,
        use_precision_aware_optimizer=offload,
    )
    optimizer = get_megatron_optimizer(opt_config, chunks)
    gbs, iters = t.global_batch_size, t.iterations
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=o.lr, min_lr=o.min_lr, lr_warmup_steps=t.warmup * gbs,
        lr_decay_steps=iters * gbs, lr_decay_style=o.lr_decay_style, start_wd=o.weight_decay,
        end_wd=o.weight_decay, wd_incr_steps=iters * gbs, wd_incr_style="constant",
    )
    return optimizer, scheduler


def _optimizer_offload(mode: str | float) -> bool:
    """Whether to offload the optimizer (the seeds' OPTIMIZER_OFFLOAD); without CUDA it is ignored, and said so.

    megatron-core's offload moves optimizer states from the GPU to the host: on a CPU run they are
    there already, so the run goes on unchanged rather than failing."""
    if mode in ("false", 0.0):
        return False
    if not torch.cuda.is_available():
        log.warning("no CUDA: optim.offload=%s (OPTIMIZER_OFFLOAD) ignored; the optimizer states are in host "
                    "memory already", mode)
        return False
    return True


def _offload_fraction(mode: str | float) -> float:
    """`static` keeps all optimizer states on the host; `auto` offloads what the GPU can't hold; a number
    is the fraction itself."""
    if isinstance(mode, float):
        return mode
    if mode == "static":
        return 1.0
    free, total = torch.cuda.mem_get_info()
    return min(1.0, max(0.0, 1.0 - free / total + 0.25))


def _forward_step(data_iterator, model):  # noqa: ANN001 - megatron's schedule contract
    from megatron.core.packed_seq_params import PackedSeqParams

    from pai_patch.training.data import batch_on_this_cp_rank

    batch = next(data_iterator)
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    seq_length = batch["tokens"].shape[1]
    batch = batch_on_this_cp_rank(batch)
    packed = None
    if "cu_seqlens" in batch:
        if batch["tokens"].shape[0] != 1:
            raise ValueError("packed SFT sequences need micro_batch_size=1")
        if model.config.multi_latent_attention:
            raise ValueError("data.pack=true: packed SFT sequences are not supported with multi-latent attention "
                             "(megatron-core's MLA takes packing only in the thd layout); use data.pack=false")
        cu = torch.unique_consecutive(batch["cu_seqlens"][0].to(torch.int32))
        # sbhd packing keeps one rotary table over the whole (global) sequence: RoPE is
        # relative and attention stays inside each sample, so per-sample positions are not
        # needed; megatron sizes that table from max_seqlen, hence the full length here.
        packed = PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                 max_seqlen_q=seq_length, max_seqlen_kv=seq_length)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"], packed_seq_params=packed)
    return output, partial(_loss, batch["loss_mask"])


def _loss(loss_mask: torch.Tensor, output: torch.Tensor):  # noqa: ANN202
    mask = loss_mask.reshape(-1).float()
    total = torch.sum(output.reshape(-1).float() * mask)
    count = mask.sum().to(torch.int)
    return total, count, {"lm loss": torch.stack([total.detach(), mask.sum()])}


def _reduce_loss(reports: list[dict[str, torch.Tensor]]) -> tuple[float, float, bool]:
    """Global per-token loss from the last stage's micro-batch reports; all ranks get it."""
    from megatron.core import parallel_state as ps

    local = torch.zeros(2, dtype=torch.float64)
    if reports and ps.get_tensor_model_parallel_rank() == 0:
        for report in reports:
            local += report["lm loss"].double().cpu()
    bad = torch.tensor([0.0 if math.isfinite(local[0].item()) else 1.0], dtype=torch.float64)
    flags = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(flags, bad)
    total = local.clone()
    total[0] = 0.0 if bad.item() else total[0]
    dist.all_reduce(total)
    bad_ranks = [i for i, f in enumerate(flags) if f.item()]
    loss = total[0].item() / max(total[1].item(), 1.0)
    return (math.nan if bad_ranks else loss), total[1].item(), bad_ranks


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        from megatron.core import parallel_state as ps

        from pai_patch.data.tokenizer import load_tokenizer
        from pai_patch.models import get_family
        from pai_patch.parallel import init_model_parallel, init_process_group, validate_layout, world_size_from_env
        from pai_patch.patches import apply_patches
        from pai_patch.training.backend import backend_runtime
        from pai_patch.training.checkpointing import refuse_if_in_use
        from pai_patch.training.moe_stats import ExpertTokenCounter
        from pai_patch.training.vocab_check import check_vocabulary

        self.cfg = cfg
        family = get_family(cfg.model.family)
        size = family.size(cfg.model.size)
        self.rt = _cpu_precision(backend_runtime(cfg))
        self.world = world_size_from_env()
        t = cfg.train
        layout = validate_layout(size, self.rt, self.world, global_batch=t.global_batch_size,
                                 micro_batch=t.micro_batch_size, num_experts=family.num_routed_experts(size),
                                 seq_length=self.rt.seq_length)
        self.tokenizer_dir = cfg.tokenizer_dir()
        self.tokenizer = load_tokenizer(self.tokenizer_dir)
        check_vocabulary(cfg, size, self.tokenizer)
        apply_patches()  # after every check of the job, so that a bad job prints its one error line and nothing else
        init_process_group()
        init_model_parallel(self.rt)
        self.output = Path(cfg.output_dir)
        self.save_root = Path(cfg.checkpoint.save) if cfg.checkpoint.save else self.output / "checkpoint"
        refuse_if_in_use(self.save_root)  # before building the model or loading a checkpoint another run writes
        _seed_everything(t.seed)
        self.dp_size = layout.dp
        self.dp_rank = ps.get_data_parallel_rank()
        self.rank = dist.get_rank()
        self.model = _build_chunks(cfg, self.rt)
        if self.rt.recompute == "offload" and not self.rt.use_te:
            from pai_patch.training.offload import install_activation_offload

            install_activation_offload(self.model, t.recompute_layers)
        self.optimizer, self.scheduler = _optimizer(cfg, self.model, self.rt)
        self.expert_tokens = ExpertTokenCounter(self.model, self.rt.sequence_parallel)
        self._hook_config()
        self.iteration, self.consumed = self._restore()

    def _hook_config(self) -> None:
        from megatron.core.distributed import finalize_model_grads

        config = self.model[0].module.config if hasattr(self.model[0], "module") else self.model[0].config
        config.finalize_model_grads_func = finalize_model_grads
        config.grad_scale_func = self.optimizer.scale_loss
        no_sync = [m.no_sync for m in self.model]
        config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync

    @property
    def model_layout(self) -> dict[str, Any]:
        """What shapes the model's (and a dp_reshardable optimizer's) shards: checked when resuming."""
        rt = self.rt
        return {"tp": rt.tp, "pp": rt.pp, "ep": rt.ep, "etp": rt.etp, "vp": rt.vp, "pp0_layers": rt.pp0_layers}

    def _restore(self) -> tuple[int, int]:
        from pai_patch.checkpoint_dir import latest_iteration
        from pai_patch.training.checkpointing import VERIFY_OFF, is_training_checkpoint, load_checkpoint, unwrap

        ck = self.cfg.checkpoint
        if latest_iteration(self.save_root) is not None:
            state = load_checkpoint(self.save_root, self.model, self.optimizer, self.scheduler, world_size=self.world,
                                    model_layout=self.model_layout, verify=ck.verify)
            return state["iteration"], state["consumed_samples"]
        if ck.load:
            if not ck.finetune and is_training_checkpoint(ck.load):
                state = load_checkpoint(ck.load, self.model, self.optimizer, self.scheduler, world_size=self.world,
                                        model_layout=self.model_layout, verify=ck.verify)
                return state["iteration"], state["consumed_samples"]
            from pai_patch.convert.io import load_model_checkpoint

            load_model_checkpoint([unwrap(m) for m in self.model], ck.load, verify=ck.verify, override=VERIFY_OFF)
            log.info("loaded weights from %s", ck.load)
        return 0, 0

    # ---- data ------------------------------------------------------------------------
    def _datasets(self):  # noqa: ANN202
        from pai_patch.training.data import build_pretrain_datasets, build_sft_datasets

        tokenizer = self.tokenizer
        if self.cfg.data.sft:
            return build_sft_datasets(self.cfg, tokenizer)
        t = self.cfg.train
        evals = (t.iterations // t.eval_interval + 1) * t.eval_iters if t.eval_interval else t.eval_iters
        return build_pretrain_datasets(self.cfg, tokenizer, (t.iterations * t.global_batch_size,
                                                             max(evals, 1) * t.global_batch_size),
                                       self.output / "data_cache")

    def _iterators(self, dataset, start: int) -> list:
        from pai_patch.training.data import micro_batches

        t = self.cfg.train
        return [micro_batches(dataset, start_iteration=start, global_batch=t.global_batch_size,
                              micro_batch=t.micro_batch_size, dp_size=self.dp_size, dp_rank=self.dp_rank,
                              seed=t.seed) for _ in self.model]

    # ---- steps -----------------------------------------------------------------------
    def _run_schedule(self, iterators: list, *, forward_only: bool) -> list[dict[str, torch.Tensor]]:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        t = self.cfg.train
        return get_forward_backward_func()(
            forward_step_func=_forward_step, data_iterator=iterators, model=self.model,
            num_microbatches=t.global_batch_size // (t.micro_batch_size * self.dp_size),
            seq_length=self.rt.seq_length, micro_batch_size=t.micro_batch_size, forward_only=forward_only,
        )

    def train_step(self, iterators: list) -> dict[str, Any]:
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = self._run_schedule(iterators, forward_only=False)
        loss, tokens, bad_ranks = _reduce_loss(reports)
        if bad_ranks:
            return {"loss": loss, "skipped": True, "bad_ranks": bad_ranks}
        ok, grad_norm, _ = self.optimizer.step()
        if ok:
            self.scheduler.step(increment=self.cfg.train.global_batch_size)
        return {"loss": loss, "tokens": tokens, "grad_norm": float(grad_norm or 0.0), "skipped": not ok}

    def evaluate(self, dataset) -> float:
        for chunk in self.model:
            chunk.eval()
        iterators = self._iterators(dataset, 0)
        total = 0.0
        with torch.no_grad():
            for _ in range(self.cfg.train.eval_iters):
                total += _reduce_loss(self._run_schedule(iterators, forward_only=True))[0]
        for chunk in self.model:
            chunk.train()
        return total / self.cfg.train.eval_iters

    def save(self) -> None:
        from pai_patch.data.tokenizer import copy_tokenizer_files
        from pai_patch.training.checkpointing import save_checkpoint

        if self.rank == 0:  # the tokenizer travels with the checkpoint: export, generation and a next stage find it
            copy_tokenizer_files(self.tokenizer_dir, self.save_root)
        save_checkpoint(self.save_root, self.iteration, self.model, self.optimizer, self.scheduler,
                        consumed_samples=self.consumed, world_size=self.world, model_layout=self.model_layout,
                        optimizer_format_requested=self.cfg.checkpoint.optimizer_format,
                        keep_last=self.cfg.checkpoint.keep_last)

    def fit(self) -> dict[str, Any]:
        from pai_patch.training.checkpointing import lock_save_dir
        from pai_patch.training.monitor import Monitor
        from pai_patch.training.signals import StopRequest

        cfg, t = self.cfg, self.cfg.train
        train_ds, valid_ds = self._datasets()
        iterators = self._iterators(train_ds, self.iteration)
        # after the datasets open (bad data writes nothing), before this run writes its lock.json, metrics or
        # checkpoints (a second run on the directory stops here, before touching the first one's)
        release_lock = lock_save_dir(self.save_root)
        if self.rank == 0:  # the environment and data this run actually uses, for `pai_patch lock check`
            from pai_patch.reproduce.lock import write_training_lock

            write_training_lock(cfg)
        monitor = Monitor(self.output, enabled=self.rank == 0)
        stop = StopRequest.install(exit_minutes=t.exit_duration_minutes)
        skips, last, reason = 0, None, "finished"
        progress = _progress(self.rank == 0, t.iterations, self.iteration)
        try:
            while self.iteration < t.iterations:
                started = time.perf_counter()
                result = self.train_step(iterators)
                self.iteration += 1
                self.consumed += t.global_batch_size
                if result["skipped"] and "bad_ranks" in result:
                    skips += 1
                    if skips > t.nan_skip_budget:
                        raise NonFiniteLossError(
                            f"non-finite loss at iteration {self.iteration} on rank(s) "
                            f"{', '.join(map(str, result['bad_ranks']))} (skip budget {t.nan_skip_budget} used up)")
                    log.warning("non-finite loss at iteration %d; batch skipped (%d/%d)", self.iteration, skips,
                                t.nan_skip_budget)
                elapsed = time.perf_counter() - started
                record = {"iteration": self.iteration, "loss": result["loss"], "lr": self.scheduler.get_lr(
                    self.optimizer.param_groups[0]), "grad_norm": result.get("grad_norm", math.nan),
                    "tokens_per_s": t.tokens_per_iter / elapsed, "step_s": elapsed}
                record.update(_moe_metrics(t.global_batch_size // (t.micro_batch_size * self.dp_size)))
                record.update(self.expert_tokens.collect())
                if t.eval_interval and valid_ds is not None and self.iteration % t.eval_interval == 0:
                    record["valid_loss"] = self.evaluate(valid_ds)
                if self.iteration % t.log_interval == 0 or self.iteration == t.iterations:
                    monitor.log(record)
                    progress.set_postfix(loss=f"{record['loss']:.4f}")
                progress.update(1)
                last = record
                interval = cfg.checkpoint.save_interval
                if interval and self.iteration % interval == 0:
                    self.save()
                if t.exit_interval and self.iteration % t.exit_interval == 0 and self.iteration < t.iterations:
                    stop.request(f"exit_interval {t.exit_interval}")
                if stop.requested():
                    reason = stop.reason
                    if not (interval and self.iteration % interval == 0):
                        self.save()
                    break
            else:
                if cfg.checkpoint.save_interval is None or self.iteration % cfg.checkpoint.save_interval:
                    self.save()
        finally:
            progress.close()
            monitor.close()
            stop.uninstall()
            release_lock()
        return {"iteration": self.iteration, "last": last, "stopped": reason}


def _moe_metrics(num_microbatches: int) -> dict[str, float]:
    """MoE auxiliary losses megatron-core tracked during the step (empty for dense models).

    The tracker sums each layer's loss over micro-batches; report the mean over MoE layers
    of the per-micro-batch value, as Megatron-LM logs it.
    """
    from megatron.core.transformer.moe.moe_utils import (
        clear_aux_losses_tracker,
        get_moe_layer_wise_logging_tracker,
        reduce_aux_losses_tracker_across_ranks,
    )

    tracker = get_moe_layer_wise_logging_tracker()
    if not tracker:
        return {}
    reduce_aux_losses_tracker_across_ranks()
    out = {}
    for name, entry in tracker.items():
        values = entry["values"]
        layers = max(int((values != 0).sum().item()), 1)
        out[f"moe/{name}"] = float(values.sum().item()) / layers / num_microbatches
    clear_aux_losses_tracker()
    return out


def _progress(enabled: bool, total: int, start: int):  # noqa: ANN202
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc="train", unit="it", dynamic_ncols=True)


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    trainer = Trainer(cfg)
    return trainer.fit()
