"""Declarative HF <-> Megatron-Core weight mappings: what each tensor is, never how to move it.

A family describes its checkpoint once, as a :class:`WeightMapping` (a tuple of
:class:`TensorRule`), and the generic engine in :mod:`pai_patch.convert` derives
everything else from it: TP slicing, PP stage ownership, EP expert placement, the
torch_dist keys, the TE-spec names, and the checks on missing/extra tensors.

Names are templates.  ``{layer}`` is the decoder layer (global in HF, local to the
pipeline stage in legacy Megatron files, a stacked axis in torch_dist) and ``{expert}``
the routed expert (global in HF, local to the EP rank in Megatron).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pai_patch.models.base import ModelSize


class Scope(enum.Enum):
    """How often a tensor occurs, which decides how PP and EP place it."""

    MODEL = "model"    # once per model; owned by the first or the last pipeline stage (see Stage)
    LAYER = "layer"    # once per decoder layer; the stage holding the layer owns it
    EXPERT = "expert"  # once per routed expert of a layer; EP ranks own contiguous expert ranges


class Stage(enum.Enum):
    """Which pipeline stage owns a MODEL-scope tensor."""

    FIRST = "first"    # embeddings: consumed before layer 0
    LAST = "last"      # final norm and output layer: applied after the last layer


class Split(enum.Enum):
    """How a Megatron tensor is divided over tensor-parallel ranks (Megatron's parallel layer kinds)."""

    REPLICATED = "replicated"  # norms, routers, biases of row-parallel layers: every rank holds all of it
    COLUMN = "column"          # ColumnParallelLinear: output features (dim 0) are split
    ROW = "row"                # RowParallelLinear: input features (dim 1) are split
    VOCAB = "vocab"            # VocabParallelEmbedding / output layer: rows padded to the padded vocab, then dim 0
    GLU = "glu"                # fused [gate; up]: each half's dim 0 is split, a rank holds [gate_r; up_r]


class Fuse(enum.Enum):
    """How several HF tensors combine into one Megatron tensor (``TensorRule.hf`` in that order)."""

    NONE = "none"      # one HF tensor, same layout
    QKV = "qkv"        # q, k, v -> per query group [q_heads_of_group..., k, v] (Megatron's interleaving)
    CONCAT = "concat"  # concatenated along dim 0 (SwiGLU gate then up)


@dataclass(frozen=True)
class TensorRule:
    """One Megatron tensor (local-spec name) and the HF tensor(s) it is made of."""

    #: local-spec Megatron name, e.g. ``decoder.layers.{layer}.self_attention.linear_qkv.weight``
    mcore: str
    #: HF names in fuse order, e.g. ``("model.layers.{layer}.self_attn.q_proj.weight", ...)``
    hf: tuple[str, ...]
    scope: Scope = Scope.LAYER
    split: Split = Split.REPLICATED
    fuse: Fuse = Fuse.NONE
    #: owner stage for MODEL scope
    stage: Stage | None = None
    #: name in the Transformer-Engine spec when it differs (TE fuses layer norms into the next linear)
    te: str | None = None
    #: torch_dist name when the local spec renames it on save (megatron's ``sharded_state_dict_keys_map``,
    #: e.g. the dense local spec saves its norms under the TE names); None = ``mcore``
    dist: str | None = None
    #: include the rule for this size (and decoder layer, for LAYER/EXPERT scope); None = always
    when: Callable[["ModelSize", int | None], bool] | None = None

    def applies(self, size: "ModelSize", layer: int | None = None) -> bool:
        return self.when is None or self.when(size, layer)

    def name(self, te: bool = False) -> str:
        return self.te if te and self.te else self.mcore

    def dist_key(self, layer: int | None = None) -> str:
        """The torch_dist key of the local spec's ``model.sharded_state_dict()``.

        megatron-core stacks experts, and the layers of a homogeneous model, as leading
        axes of one tensor (``layer`` None); a model whose layers differ (dense first
        layers of an MoE) keeps the global layer number in the key instead.
        """
        name = (self.dist or self.mcore).replace("local_experts.{expert}.", "experts.")
        return name.replace("{layer}.", "") if layer is None else name.replace("{layer}", str(layer))


@dataclass(frozen=True)
class WeightMapping:
    """Everything the engine needs to know about one family's checkpoint layout."""

    rules: tuple[TensorRule, ...]
    #: routed experts per MoE layer (0 for dense models)
    num_experts: Callable[["ModelSize"], int] = field(default=lambda size: 0)
    #: whether torch_dist stacks the layers as one axis (megatron-core's ``non_homogeneous_layers``
    #: is off): true unless the layers differ, e.g. ``moe_layer_freq`` mixing dense and MoE layers
    stacked_layers: Callable[["ModelSize"], bool] = field(default=lambda size: True)
    #: (embedding, output layer): with tied embeddings a later pipeline stage keeps a copy of the
    #: embedding under the output-layer name in legacy checkpoints; torch_dist stores it once
    tied: tuple[str, str] = ("embedding.word_embeddings.weight", "output_layer.weight")

    def scope(self, scope: Scope) -> tuple[TensorRule, ...]:
        return tuple(rule for rule in self.rules if rule.scope is scope)
