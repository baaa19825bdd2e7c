"""The seeds' positional launchers as a thin layer over recipes.

``run_mcore_qwen.sh`` (25 args), ``run_mcore_qwen3.sh`` (27), ``run_mcore_deepseek.sh`` (26), Llama2's
``run_pretrain_megatron_llama.sh`` (24) and ``run_finetune_megatron_llama.sh`` (22) keep
their argument order; each argument becomes a recipe override, checked against its
allowed values, and the run is the same as ``make recipe=... <stage> <overrides>``
(printed, so users can move to the recipe form).  Environment switches of the
original launchers are honoured: MP_DATASET_TYPE, MP_AC_LAYERS, MP_VP, MP_PP0_LAYERS,
MP_SFT_PACKING.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass
from typing import Callable, Mapping

from pai_patch.configio import ConfigError

BOOL = ("true", "false")


@dataclass(frozen=True)
class Arg:
    name: str
    #: recipe key ("{stage}" is replaced by pretrain/sft), or None when the value is only read
    key: str | None
    allowed: tuple[str, ...] | None = None
    kind: Callable[[str], object] = str
    #: what a value that ``kind`` refuses should have been; None: an integer or a number
    expected: str | None = None


def _int(text: str) -> int:
    return int(text)


def _float(text: str) -> float:
    return float(text)


COMMON_TRAIN = [
    Arg("BATCH_SIZE", "{stage}.train.micro_batch_size", kind=_int),
    Arg("GLOBAL_BATCH_SIZE", "{stage}.train.global_batch_size", kind=_int),
    Arg("LR", "{stage}.optim.lr", kind=_float),
    Arg("MIN_LR", "{stage}.optim.min_lr", kind=_float),
    Arg("SEQ_LEN", "{stage}.train.seq_length", kind=_int),
    Arg("PAD_LEN", "{stage}.data.pad_length", kind=_int),
]


def _offload(text: str) -> str | float:
    """run_mcore_qwen3.sh's OPTIMIZER_OFFLOAD: false, or the fraction of the optimizer state to offload
    (its range is the optimizer section's check, as for the recipe form)."""
    return text if text == "false" else float(text)


OFFLOAD_MODES = Arg("OPTIMIZER_OFFLOAD", "{stage}.optim.offload", ("false", "static", "auto"))
OFFLOAD_FRACTION = Arg("OPTIMIZER_OFFLOAD", "{stage}.optim.offload", kind=_offload,
                       expected="false or a fraction from 0 to 1")


def _mcore(with_ep: bool, with_etp: bool = False, offload: Arg = OFFLOAD_MODES) -> list[Arg]:
    return [
        Arg("ENV", "launch.env", ("dsw", "dlc")),
        Arg("MODEL_SIZE", "model.size"),
        *COMMON_TRAIN,
        Arg("PR", "{stage}.train.precision", ("fp16", "bf16", "fp8")),
        Arg("TP", "parallel.tp", kind=_int),
        Arg("PP", "parallel.pp", kind=_int),
        Arg("CP", "parallel.cp", kind=_int),
        *([Arg("ETP", "parallel.etp", kind=_int)] if with_etp else []),
        *([Arg("EP", "parallel.ep", kind=_int)] if with_ep else []),
        Arg("SP", "parallel.sequence_parallel", BOOL),
        Arg("DO", "parallel.distributed_optimizer", BOOL),
        Arg("FL", "{stage}.train.flash_attn", BOOL),
        Arg("SFT", None, BOOL),
        Arg("AC", "{stage}.train.recompute", ("sel", "full", "offload", "false")),
        offload,
        Arg("SAVE_INTERVAL", "{stage}.checkpoint.save_interval", kind=_int),
        Arg("DATASET_PATH", "{stage}.data.train_path"),
        Arg("VALID_DATASET_PATH", "{stage}.data.valid_path"),
        Arg("PRETRAIN_CHECKPOINT_PATH", "{stage}.checkpoint.load"),
        Arg("TRAIN_TOKENS_OR_ITERS", None, kind=_int),
        Arg("WARMUP_TOKENS_OR_ITERS", None, kind=_int),
        Arg("OUTPUT_BASEPATH", "output_dir"),
    ]


LLAMA_HEAD = [Arg("ENV", "launch.env", ("dsw", "dlc")), Arg("MEGATRON_PATH", None),
              Arg("MEGATRON_PATCH_PATH", None), Arg("MODEL_SIZE", "model.size")]
LLAMA_MID = [
    Arg("EXTRA_VOCAB_SIZE", None, kind=_int),
    Arg("PR", "{stage}.train.precision", ("fp16", "bf16")),
    Arg("TP", "parallel.tp", kind=_int),
    Arg("PP", "parallel.pp", kind=_int),
    Arg("AC", "{stage}.train.recompute", ("sel", "full")),
    Arg("DO", "parallel.distributed_optimizer", BOOL),
    Arg("FL", "{stage}.train.flash_attn", BOOL),
    Arg("SP", "parallel.sequence_parallel", BOOL),
]

SCRIPTS: dict[str, tuple[str, list[Arg]]] = {
    "run_mcore_qwen": ("qwen2_5", _mcore(with_ep=False)),
    "run_mcore_qwen3": ("qwen3", _mcore(with_ep=True, with_etp=True, offload=OFFLOAD_FRACTION)),
    "run_mcore_deepseek": ("deepseek_v2", _mcore(with_ep=True)),
    "run_pretrain_megatron_llama": ("llama2", [
        *LLAMA_HEAD, *COMMON_TRAIN, *LLAMA_MID,
        Arg("SAVE_INTERVAL", "{stage}.checkpoint.save_interval", kind=_int),
        Arg("DATASET_PATH", "{stage}.data.train_path"),
        Arg("PRETRAIN_CHECKPOINT_PATH", "{stage}.checkpoint.load"),
        Arg("TRAIN_TOKENS", "{stage}.train.train_tokens", kind=_int),
        Arg("WARMUP_TOKENS", "{stage}.train.warmup_tokens", kind=_int),
        Arg("OUTPUT_BASEPATH", "output_dir"),
    ]),
    "run_finetune_megatron_llama": ("llama2", [
        *LLAMA_HEAD,
        *(a for a in COMMON_TRAIN if a.name != "GLOBAL_BATCH_SIZE"),
        *LLAMA_MID,
        Arg("TRAIN_DATASET_PATH", "{stage}.data.train_path"),
        Arg("VALID_DATASET_PATH", "{stage}.data.valid_path"),
        Arg("PRETRAIN_CHECKPOINT_PATH", "{stage}.checkpoint.load"),
        Arg("EPOCH", None, kind=_int),
        Arg("OUTPUT_BASEPATH", "output_dir"),
    ]),
}


def _bool(text: str) -> bool:
    return text == "true"


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def translate(script: str, argv: list[str], env: Mapping[str, str] = os.environ) -> tuple[str, list[str], list[str]]:
    """(stage, overrides, notes) for a seed script's positional arguments."""
    if script not in SCRIPTS:
        raise ConfigError(f"unknown launcher {script!r}; valid: {', '.join(SCRIPTS)}")
    recipe, spec = SCRIPTS[script]
    if len(argv) != len(spec):
        names = " ".join(a.name for a in spec)
        raise ConfigError(f"{script}.sh takes {len(spec)} arguments, got {len(argv)}; usage: {script}.sh {names}")
    values: dict[str, object] = {}
    for position, (arg, text) in enumerate(zip(spec, argv), start=1):
        if arg.allowed is not None and text not in arg.allowed:
            raise ConfigError(f"{script}.sh argument {position} ({arg.name}) = {text!r}; "
                              f"allowed: {', '.join(arg.allowed)}")
        try:
            values[arg.name] = _bool(text) if arg.allowed == BOOL else arg.kind(text)
        except ValueError:
            raise ConfigError(f"{script}.sh argument {position} ({arg.name}) = {text!r}; "
                              f"expected {arg.expected or ('an integer' if arg.kind is _int else 'a number')}") from None
    sft = bool(values.get("SFT", script == "run_finetune_megatron_llama"))
    stage = "sft" if sft else "pretrain"
    notes: list[str] = []
    overrides = [f"recipe={recipe}"]
    for arg in spec:
        if arg.key is None:
            continue
        value = values[arg.name]
        if arg.name == "PRETRAIN_CHECKPOINT_PATH" and str(value).lower() in ("none", "", "null"):
            overrides.append("from_scratch=true")  # the original launchers then pass no --load
            continue
        if arg.name == "SP" and value and int(values.get("TP", 1)) == 1:
            notes.append("SP=true with TP=1: sequence parallelism needs TP>1, so it is off (as Megatron-LM does)")
            value = False
        overrides.append(f"{arg.key.format(stage=stage)}={_fmt(value)}")
    overrides += _budget(script, stage, values)
    if "EPOCH" in values:
        overrides += _epoch_budget(stage, values, _data_parallel(recipe, overrides, env))
    overrides += _environment(stage, env, notes)
    overrides += _virtual_pipeline(recipe, values, env)
    if stage == "sft" and script == "run_finetune_megatron_llama":
        overrides.append("sft.data.type=raw")
    return stage, overrides, notes


def _budget(script: str, stage: str, values: Mapping[str, object]) -> list[str]:
    """Seeds give tokens for pretraining and iterations for SFT (same positions)."""
    if "TRAIN_TOKENS_OR_ITERS" in values:
        unit = "iters" if stage == "sft" else "tokens"
        other = "tokens" if unit == "iters" else "iters"
        return [f"{stage}.train.train_{unit}={values['TRAIN_TOKENS_OR_ITERS']}", f"{stage}.train.train_{other}=null",
                f"{stage}.train.warmup_{unit}={values['WARMUP_TOKENS_OR_ITERS']}", f"{stage}.train.warmup_{other}=null"]
    if script == "run_pretrain_megatron_llama":
        return [f"{stage}.train.train_iters=null", f"{stage}.train.warmup_iters=null"]
    return []


def _data_parallel(recipe_name: str, overrides: list[str], env: Mapping[str, str]) -> int:
    """DP of the job the overrides describe: the launcher's world size (dsw: the node's GPUs;
    dlc: WORLD_SIZE nodes x KUBERNETES_CONTAINER_RESOURCE_GPU) over TP x PP x CP."""
    from pai_patch.recipes.launch import nodes_and_procs
    from pai_patch.recipes.resolve import load_recipe

    recipe = load_recipe(recipe_name, overrides[1:])
    nodes, per_node = nodes_and_procs(recipe, env)
    p = recipe.parallel
    return max(1, nodes * per_node // (p.tp * p.pp * p.cp))  # an indivisible layout is refused by validate_layout


def _epoch_budget(stage: str, values: Mapping[str, object], data_parallel: int) -> list[str]:
    """The llama finetune launcher passes no global batch: as in Megatron-LM, one iteration takes
    BATCH_SIZE samples on each data-parallel rank, and EPOCH passes take epochs x samples / that."""
    batch = int(values["BATCH_SIZE"]) * data_parallel
    iters = epoch_iters(str(values["TRAIN_DATASET_PATH"]), int(values["EPOCH"]), batch)
    return [f"{stage}.train.train_iters={iters}", f"{stage}.train.train_tokens=null",
            f"{stage}.train.global_batch_size={batch}"]


def epoch_iters(train_path: str, epochs: int, global_batch_size: int) -> int:
    """Iterations for ``epochs`` passes over an alpaca JSON file (Megatron-LM's ``--epochs``).

    The recipes count training in iterations, so the llama finetune launcher's EPOCH is turned
    into ceil(epochs x samples / global batch); the file is read once here to count its samples.
    """
    from pai_patch.data.sft import read_conversations

    samples = len(read_conversations(train_path, "alpaca"))
    if samples == 0:
        raise ConfigError(f"{train_path}: no samples (TRAIN_DATASET_PATH of run_finetune_megatron_llama.sh)")
    return max(1, -(-epochs * samples // global_batch_size))


def _environment(stage: str, env: Mapping[str, str], notes: list[str]) -> list[str]:
    out = []
    if env.get("MP_DATASET_TYPE"):
        if env["MP_DATASET_TYPE"] not in ("raw", "mmap"):
            raise ConfigError(f"MP_DATASET_TYPE={env['MP_DATASET_TYPE']!r}; allowed: raw, mmap")
        out.append(f"{stage}.data.type={env['MP_DATASET_TYPE']}")
    for var, key in (("MP_AC_LAYERS", f"{stage}.train.recompute_layers"), ("MP_PP0_LAYERS", "parallel.pp0_layers")):
        if env.get(var):
            if not env[var].isdigit():
                raise ConfigError(f"{var}={env[var]!r}; expected a positive integer")
            out.append(f"{key}={env[var]}")
    if env.get("MP_SFT_PACKING"):
        if env["MP_SFT_PACKING"] not in BOOL:
            raise ConfigError(f"MP_SFT_PACKING={env['MP_SFT_PACKING']!r}; allowed: true, false")
        out.append(f"{stage}.data.pack={env['MP_SFT_PACKING']}")
    return out


def _virtual_pipeline(recipe: str, values: Mapping[str, object], env: Mapping[str, str]) -> list[str]:
    """MP_VP is Megatron-LM's ``--num-layers-per-virtual-pipeline-stage`` (layers per chunk, as the
    original launchers pass it); megatron-core wants the chunks per stage: layers / PP / MP_VP."""
    text = env.get("MP_VP")
    if not text:
        return []
    if not text.isdigit() or int(text) == 0:
        raise ConfigError(f"MP_VP={text!r}; expected a positive integer (layers per virtual pipeline stage)")
    from pai_patch.models import get_family

    layers, pp = get_family(recipe).size(str(values["MODEL_SIZE"])).num_layers, int(values.get("PP", 1))
    if layers % (pp * int(text)):
        raise ConfigError(f"MP_VP={text}: layers per virtual pipeline stage must divide the layers per pipeline "
                          f"stage ({layers} layers / PP={pp})")
    chunks = layers // pp // int(text)
    return [f"parallel.vp={chunks}"] if chunks > 1 else []  # one chunk per stage is the plain pipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("script", choices=sorted(SCRIPTS), help="which seed launcher's interface")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the launcher's positional arguments")


def run(args: argparse.Namespace) -> int:
    from pai_patch.recipes.stages import run_stage

    stage, overrides, notes = translate(args.script, args.args)
    for note in notes:
        print(f"note: {note}")
    print("equivalent: make " + " ".join(shlex.quote(o) for o in overrides) + f" {stage}")
    run_stage(stage, overrides)
    return 0
