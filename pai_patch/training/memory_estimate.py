"""Per-GPU memory of a training job, estimated before a GPU is spent on it.

Weights, gradients and optimizer states follow megatron-core's mixed-precision layout: 16-bit
weights, fp32 main gradients, an fp32 master copy and two Adam moments (sharded over data
parallelism with the distributed optimizer). Activations follow Korthikanti et al., "Reducing
Activation Recomputation in Large Transformer Models" (2022), with flash attention (no s^2
term), a gated MLP of the model's own width, and the MoE dispatch buffers of the routed tokens.
It is an estimate: good for "fits with room", "does not fit", and which switch moves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pai_patch.models.base import ModelSize, Runtime, padded_vocab_size

GB = 1e9
#: allocator fragmentation on top of what the tensors need
FRAGMENTATION = 0.10
#: CUDA context, NCCL and cuBLAS workspaces per process
CONTEXT_BYTES = 1.5 * GB


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    grads: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        tensors = self.weights + self.grads + self.optimizer + self.activations + self.logits
        return tensors * (1 + FRAGMENTATION) + CONTEXT_BYTES

    def describe(self) -> str:
        parts = ("weights", "grads", "optimizer", "activations", "logits")
        return ", ".join(f"{p} {getattr(self, p) / GB:.1f}" for p in parts) + f"; total {self.total / GB:.1f} GB"


@dataclass(frozen=True)
class Job:
    """What a per-GPU estimate depends on, beyond the model's shape."""

    rt: Runtime
    world: int
    micro_batch: int
    global_batch: int
    distributed_optimizer: bool


def estimate(size: ModelSize, counts: dict[str, int], job: Job) -> MemoryEstimate:
    """The larger of the first pipeline stage (embedding, most activations in flight) and the last (logits)."""
    rt = job.rt
    etp = rt.etp or rt.tp  # megatron-core's default expert tensor parallelism is TP
    dp = job.world // (rt.tp * rt.pp * rt.cp)
    expert_dp = max(1, job.world // (rt.pp * rt.ep * etp))
    routed = counts.get("params_routed_experts", 0)
    embedding = counts["params_embedding"]
    output = 0 if size.tie_embeddings else embedding
    body = counts["params_total"] - routed - embedding - output
    per_stage_body = body / (rt.tp * rt.pp) + routed / (rt.pp * rt.ep * etp)
    stages = [(embedding + output) / rt.tp] if rt.pp == 1 else [embedding / rt.tp, output / rt.tp]

    half = rt.precision in ("bf16", "fp16", "fp8")
    weight_bytes, grad_bytes, optim_bytes = (2, 4, 12) if half else (4, 4, 8)
    dense_share = body / (rt.tp * rt.pp)
    expert_share = routed / (rt.pp * rt.ep * etp)

    micro_steps = max(1, job.global_batch // (job.micro_batch * dp))
    in_flight = min(rt.pp, micro_steps)
    layer = _activation_bytes_per_layer(size, rt, job.micro_batch)
    layers_per_stage = size.num_layers / rt.pp
    tokens = rt.seq_length // rt.cp * job.micro_batch
    logits = tokens * padded_vocab_size(size.vocab_size) / rt.tp * 6  # 16-bit logits + fp32 softmax

    worst: MemoryEstimate | None = None
    for i, edge in enumerate(stages):
        params = per_stage_body + edge
        optimizer = optim_bytes * (((dense_share + edge) / dp + expert_share / expert_dp)
                                   if job.distributed_optimizer else params)
        last = i == len(stages) - 1
        held = layers_per_stage * (in_flight if i == 0 else 1)
        candidate = MemoryEstimate(weights=weight_bytes * params, grads=grad_bytes * params, optimizer=optimizer,
                                   activations=held * layer, logits=logits if last else 0.0)
        if worst is None or candidate.total > worst.total:
            worst = candidate
    assert worst is not None
    return worst


def _activation_bytes_per_layer(size: ModelSize, rt: Runtime, micro_batch: int) -> float:
    s, b, h = rt.seq_length / rt.cp, micro_batch, size.hidden_size
    experts = getattr(size, "num_experts", 0) or 0
    if experts:
        width = (size.moe_topk + getattr(size, "num_shared_experts", 0)) * size.moe_ffn_hidden_size
        dispatch = 4 * size.moe_topk * s * b * h  # permuted tokens and their gradient-side copy
    else:
        width, dispatch = size.ffn_hidden_size, 0.0
    replicated = 10 * s * b * h  # layer norms and residual inputs: split by TP only under sequence parallelism
    sharded = 8 * s * b * h + 6 * s * b * width + dispatch  # QKV/attention outputs, gated MLP, MoE buffers
    full = (replicated + sharded) / rt.tp if rt.sequence_parallel else replicated + sharded / rt.tp
    if rt.recompute == "full":  # only each layer's input survives (plus one layer being recomputed)
        kept = 2 * s * b * h / (rt.tp if rt.sequence_parallel else 1)
        return kept + full / size.num_layers
    return full
