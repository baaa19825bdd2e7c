"""A recipe: one YAML per model family pinning every stage of the seed workflow.

``recipes/<name>/recipe.yaml`` has a section per stage (data, convert, pretrain, sft,
export, eval, generate) plus the model, parallel layout and launch environment, and a
``sizes`` table whose rows override the defaults for the real model sizes (the defaults
are the CPU-sized ``tiny`` run).  Everything is validated into these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pai_patch.training.config import ModelSection, ParallelSection


@dataclass
class LaunchSection:
    #: dsw: one node (all its GPUs, or on CPU the fewest processes the layout needs);
    #: dlc: PAI-DLC multi-node, from WORLD_SIZE (nodes), RANK (node rank), MASTER_ADDR/PORT
    env: Literal["dsw", "dlc"] = "dsw"
    nproc_per_node: int | None = None
    master_port: int = 29500


@dataclass
class DataStage:
    pretrain_input: str = "pai_patch/assets/corpus/pretrain.jsonl"
    json_key: str = "text"
    sft_train: str = "pai_patch/assets/corpus/sft_train.json"
    sft_valid: str = "pai_patch/assets/corpus/sft_valid.json"
    sft_format: Literal["alpaca", "sharegpt", "messages"] = "alpaca"
    tokenizer: str = "shipped"
    workers: int = 2


@dataclass
class ConvertStage:
    #: the HF checkpoint to start from; null: a seeded random HF model of the size (tiny runs)
    hf: str | None = None
    format: Literal["torch_dist", "legacy"] = "torch_dist"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 1234


@dataclass
class TrainStage:
    """Sections merged over the training job defaults (see pai_patch.training.config)."""

    optim: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportStage:
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: false exports a checkpoint whose completeness marker or checksums fail (`mcore2hf --no-verify`, warns)
    verify: bool = True


@dataclass
class EvalStage:
    tasks: list[str] = field(default_factory=lambda: ["pai_tiny_mc"])
    data_dir: str | None = None
    limit: int | None = None
    batch_size: int = 8
    apply_chat_template: bool = False
    #: few-shot examples per question (the published CMMLU / C-Eval figures are 5-shot); None: the task's default
    num_fewshot: int | None = None
    #: absolute difference within which a measured score counts as reproducing a published one
    tolerance: float = 0.02
    #: published scores: task/metric -> {value, source}
    published: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerateStage:
    prompts: str = "pai_patch/assets/corpus/prompts.jsonl"
    max_new_tokens: int = 24
    top_k: int = 1
    top_p: float = 0.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    #: wrap prompts in the tokenizer's chat template (models after SFT)
    chat: bool = False
    #: false loads (generate, serve) a checkpoint whose completeness marker or checksums fail (`--no-verify`, warns)
    verify: bool = True


@dataclass
class Recipe:
    recipe: str
    image: str
    model: ModelSection
    parallel: ParallelSection = field(default_factory=ParallelSection)
    launch: LaunchSection = field(default_factory=LaunchSection)
    data: DataStage = field(default_factory=DataStage)
    convert: ConvertStage = field(default_factory=ConvertStage)
    pretrain: TrainStage = field(default_factory=TrainStage)
    sft: TrainStage = field(default_factory=TrainStage)
    export: ExportStage = field(default_factory=ExportStage)
    eval: EvalStage = field(default_factory=EvalStage)
    generate: GenerateStage = field(default_factory=GenerateStage)
    #: where every stage writes (default output/<recipe>-<size>)
    output_dir: str | None = None
    #: train from random initialisation even at a published size or with convert.hf set (announced in the log);
    #: otherwise a training stage with nothing to load converts convert.hf first
    from_scratch: bool = False
    description: str = ""
    #: per-size overrides of any section, applied when model.size selects the row
    sizes: dict[str, Any] = field(default_factory=dict)
    #: pinned versions and data hashes this recipe was validated with (see `lock check`)
    lock: dict[str, Any] = field(default_factory=dict)
