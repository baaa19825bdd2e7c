"""From a declarative mapping to concrete tensors: which exist, their shapes, and their TP/PP/EP pieces.

Megatron tensors are handled in their *full* form (all TP ranks together, vocabulary
padded, QKV interleaved, GLU as [gate; up]): that form is what torch_dist stores, so it
is TP-independent; legacy files hold its :func:`shard` for one rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pai_patch.convert.mapping import Fuse, Scope, Split, Stage, TensorRule, WeightMapping
from pai_patch.models.base import ModelSize, Runtime, padded_vocab_size
from pai_patch.parallel import LayoutError, validate_layout

if TYPE_CHECKING:
    from pai_patch.models.base import ModelFamily


@dataclass(frozen=True)
class Item:
    """One Megatron tensor: a rule at a global layer and global expert."""

    rule: TensorRule
    layer: int | None = None
    expert: int | None = None

    @property
    def hf_names(self) -> tuple[str, ...]:
        return tuple(n.format(layer=self.layer, expert=self.expert) for n in self.rule.hf)

    def mcore_name(self, *, te: bool = False, layer: int | None = None, expert: int | None = None) -> str:
        """The legacy state-dict name, with the stage-local layer and EP-local expert numbers."""
        return self.rule.name(te).format(layer=layer, expert=expert)

    @property
    def label(self) -> str:
        return self.rule.mcore.format(layer=self.layer, expert=self.expert)


@dataclass(frozen=True)
class Group:
    """Tensors converted together: the unit of streaming and of the progress bar."""

    name: str
    items: tuple[Item, ...]
    layer: int | None = None  # the decoder layer, for PP placement; None for MODEL scope
    stage: Stage | None = None


def groups(mapping: WeightMapping, size: ModelSize) -> list[Group]:
    """Embeddings, then one group per decoder layer (its experts included), then the head."""

    def model_items(stage: Stage) -> tuple[Item, ...]:
        return tuple(Item(r) for r in mapping.scope(Scope.MODEL) if r.stage is stage and r.applies(size))

    experts = range(mapping.num_experts(size))
    out = [Group("embeddings", model_items(Stage.FIRST), stage=Stage.FIRST)]
    for layer in range(size.num_layers):
        items = [Item(r, layer) for r in mapping.scope(Scope.LAYER) if r.applies(size, layer)]
        items += [Item(r, layer, e) for r in mapping.scope(Scope.EXPERT) if r.applies(size, layer) for e in experts]
        out.append(Group(f"layer {layer}", tuple(items), layer=layer))
    out.append(Group("output", model_items(Stage.LAST), stage=Stage.LAST))
    return [g for g in out if g.items]


# ---- parallel layout ------------------------------------------------------------------
def check_layout(size: ModelSize, mapping: WeightMapping, tp: int, pp: int, ep: int, *, vp: int | None = None,
                 pp0_layers: int | None = None) -> None:
    """The rules a converted checkpoint must satisfy to load at this layout (LayoutError names the rule)."""
    experts = mapping.num_experts(size)
    validate_layout(size, Runtime(tp=tp, pp=pp, ep=ep, vp=vp, pp0_layers=pp0_layers), tp * pp * ep,
                    num_experts=experts or None, for_training=False)
    padded = padded_vocab_size(size.vocab_size)
    if padded % tp:
        raise LayoutError(f"invalid parallel layout: TP={tp} must divide the padded vocabulary "
                          f"({size.vocab_size} padded to {padded})")


@dataclass(frozen=True)
class StageMap:
    """Which pipeline stage and virtual-pipeline chunk hold each decoder layer, and its number there.

    Megatron-core's assignment (``get_transformer_layer_offset``): the first stage holds
    ``pp0_layers`` layers and the others split the rest evenly; each stage's layers split
    into ``vp`` equal chunks, and chunk ``c`` of every stage follows chunk ``c - 1`` of all
    stages (PP=2, VP=2, 4 layers: stage 0 holds layers 0 and 2, stage 1 layers 1 and 3).
    Legacy files number layers from 0 within each chunk.
    """

    num_layers: int
    pp: int = 1
    vp: int = 1
    pp0_layers: int | None = None

    def stage_size(self, stage: int) -> int:
        if self.pp0_layers is None or self.pp == 1:
            return self.num_layers // self.pp
        return self.pp0_layers if stage == 0 else (self.num_layers - self.pp0_layers) // (self.pp - 1)

    def layers(self, stage: int, chunk: int = 0) -> range:
        """Global layers of virtual chunk ``chunk`` on pipeline stage ``stage``."""
        per_chunk = [self.stage_size(s) // self.vp for s in range(self.pp)]
        start = chunk * sum(per_chunk) + sum(per_chunk[:stage])
        return range(start, start + per_chunk[stage])

    def place(self, group: Group) -> tuple[int, int, int]:
        """(stage, chunk, first local layer number) of ``group``: embeddings first, output layer last."""
        if group.layer is None:
            return (0, 0, 0) if group.stage is Stage.FIRST else (self.pp - 1, self.vp - 1, 0)
        for stage in range(self.pp):
            for chunk in range(self.vp):
                held = self.layers(stage, chunk)
                if group.layer in held:
                    return stage, chunk, held.start
        raise ValueError(f"layer {group.layer} is outside the model's {self.num_layers} layers")


def local_expert(expert: int, num_experts: int, ep: int) -> tuple[int, int]:
    """(EP rank, local expert number) of a global expert: ranks own contiguous ranges."""
    per = num_experts // ep
    return expert // per, expert % per


# ---- HF <-> full Megatron tensors ---------------------------------------------------
def to_mcore(item: Item, parts: list[torch.Tensor], size: ModelSize) -> torch.Tensor:
    """Combine the HF tensors of ``item`` into the full Megatron tensor (vocab padded)."""
    rule = item.rule
    if rule.fuse is Fuse.QKV:
        groups_, heads = size.num_query_groups, size.num_attention_heads
        q, k, v = parts
        rest = q.shape[1:]
        head_dim = q.shape[0] // heads
        full = torch.cat([q.reshape(groups_, heads // groups_ * head_dim, *rest),
                          k.reshape(groups_, head_dim, *rest), v.reshape(groups_, head_dim, *rest)], dim=1)
        return full.reshape(-1, *rest)
    full = torch.cat(parts) if rule.fuse is Fuse.CONCAT else parts[0]
    if rule.split is Split.VOCAB:
        padding = padded_vocab_size(size.vocab_size) - full.shape[0]
        if padding > 0:
            full = torch.cat([full, full.new_zeros(padding, *full.shape[1:])])
    return full


def to_hf(item: Item, full: torch.Tensor, size: ModelSize) -> list[torch.Tensor]:
    """Inverse of :func:`to_mcore`: the HF tensors of ``item`` (contiguous, padding dropped)."""
    rule = item.rule
    if rule.fuse is Fuse.QKV:
        groups_, heads = size.num_query_groups, size.num_attention_heads
        rest = full.shape[1:]
        head_dim = full.shape[0] // (heads + 2 * groups_)
        per_group = full.reshape(groups_, (heads // groups_ + 2) * head_dim, *rest)
        q, k, v = per_group.split([heads // groups_ * head_dim, head_dim, head_dim], dim=1)
        return [t.reshape(-1, *rest).contiguous() for t in (q, k, v)]
    if rule.split is Split.VOCAB:
        full = full[: size.vocab_size]
    if rule.fuse is Fuse.CONCAT:
        return [t.contiguous() for t in full.chunk(len(rule.hf))]
    return [full.contiguous()]


def shard(rule: TensorRule, full: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    """The piece of a full Megatron tensor that TP rank ``rank`` holds."""
    if rule.split is Split.REPLICATED or tp == 1:
        return full
    if rule.split is Split.ROW:
        return full.chunk(tp, dim=1)[rank].contiguous()
    if rule.split is Split.GLU:
        return torch.cat([half.chunk(tp)[rank] for half in full.chunk(2)])
    return full.chunk(tp)[rank].contiguous()


def unshard(rule: TensorRule, pieces: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`shard` over all TP ranks."""
    if rule.split is Split.REPLICATED or len(pieces) == 1:
        return pieces[0]
    if rule.split is Split.ROW:
        return torch.cat(pieces, dim=1)
    if rule.split is Split.GLU:
        halves = [p.chunk(2) for p in pieces]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])
    return torch.cat(pieces)


# ---- expected shapes ------------------------------------------------------------------
def hf_shapes(family: "ModelFamily", size: ModelSize) -> dict[str, tuple[int, ...]]:
    """Every HF tensor's shape as saved on disk, from transformers itself (a meta-device model: no memory).

    transformers 5 fuses some tensors in memory (all MoE experts in one) and splits them
    back when saving; the same reverse conversion gives the names checkpoints have.
    """
    import transformers
    from transformers.core_model_loading import revert_weight_conversion

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(family.hf_config(size))
    return {name: tuple(t.shape) for name, t in revert_weight_conversion(model, model.state_dict()).items()}


def full_shape(item: Item, shapes: dict[str, tuple[int, ...]], size: ModelSize) -> tuple[int, ...]:
    """The full Megatron shape of ``item``, derived from the HF shapes by the same transform."""
    parts = [torch.empty(shapes[n], device="meta") for n in item.hf_names]
    return tuple(to_mcore(item, parts, size).shape)

