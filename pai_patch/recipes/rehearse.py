"""``make recipe=R size=S [k=v ...] rehearse``: a GPU job's start-up, minus the compute, on any machine.

Everything a real job checks before its first step, for the real world size: the recipe, the tokenizer
(found where a job finds it), the data, tokens -> iterations, the parallel layout's rules, the HF
checkpoint's tensor names and shapes (safetensors headers only, never the weights), a Megatron
checkpoint's layout, and a per-GPU memory estimate against a named GPU. One report, one exit code;
every problem one line naming its culprit. ``DRY_RUN=rehearse`` on any stage or seed launcher runs this
instead of the stage. A user on PAI otherwise meets each of these only after a
cluster job has queued and started.

World size: ``gpus=N nodes=M``; else, under ``env=dlc``, PAI-DLC's ``WORLD_SIZE`` (nodes) and
``KUBERNETES_CONTAINER_RESOURCE_GPU`` (GPUs per node); else ``launch.nproc_per_node``, the GPUs this
machine has, or (no GPU here) 8 for a published size and the CPU layout's processes for ``tiny``. ``gpu=H800`` (default) names the GPU the memory is held against.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Mapping

from pai_patch.checkpoint_dir import has_checkpoint
from pai_patch.cli import CliError
from pai_patch.gpus import DEFAULT_GPU, Gpu, gpu
from pai_patch.recipes.launch import nodes_and_procs
from pai_patch.recipes.resolve import REHEARSE_KEYS, Paths, resolve_path, train_config
from pai_patch.recipes.schema import Recipe

GPUS_PER_NODE = 8


@dataclasses.dataclass
class Report:
    lines: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    def check(self, what: str, step: Callable[[], str | None]) -> bool:
        """Run one check: its result is a report line; its exception, a problem naming ``what``."""
        try:
            line = step()
        except (CliError, ValueError, KeyError, OSError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            self.problems.append(f"{what}: {message}")
            return False
        if line:
            self.lines.append(f"{what}: {line}")
        return True


def switches(overrides: list[str]) -> dict[str, str]:
    return {k: v for k, _, v in (o.partition("=") for o in overrides) if k in REHEARSE_KEYS}


def world(recipe: Recipe, keys: Mapping[str, str], env: Mapping[str, str] = os.environ) -> tuple[int, int, str]:
    """(nodes, GPUs per node, where they came from)."""
    dlc = recipe.launch.env == "dlc"
    if "nodes" in keys:
        nodes, node_source = int(keys["nodes"]), "nodes="
    elif dlc and "WORLD_SIZE" in env:
        nodes, node_source = int(env["WORLD_SIZE"]), "WORLD_SIZE"
    else:
        nodes, node_source = 1, "a single node"
    if "gpus" in keys:
        per_node, source = int(keys["gpus"]), "gpus="
    elif dlc and env.get("KUBERNETES_CONTAINER_RESOURCE_GPU"):
        per_node, source = int(env["KUBERNETES_CONTAINER_RESOURCE_GPU"]), "KUBERNETES_CONTAINER_RESOURCE_GPU"
    elif recipe.launch.nproc_per_node:
        per_node, source = recipe.launch.nproc_per_node, "launch.nproc_per_node"
    else:
        import torch

        if torch.cuda.is_available():
            per_node, source = torch.cuda.device_count(), "the GPUs here"
        elif recipe.model.size == "tiny":
            per_node, source = nodes_and_procs(recipe, env)[1], "the CPU processes tiny runs with"
        else:
            per_node, source = GPUS_PER_NODE, "a PAI GPU node, assumed; gpus=N to change"
    return nodes, per_node, f"{nodes} x {per_node} (nodes: {node_source}; per node: {source})"


TRAINING = ("pretrain", "sft")


def rehearse(recipe: Recipe, p: Paths, overrides: list[str], stages: tuple[str, ...] = TRAINING) -> Report:
    """The report for the training ``stages`` (a seed launcher runs one of them; ``make ... rehearse`` both)."""
    from pai_patch.models import get_family
    from pai_patch.models.params import count_params

    keys = switches(overrides)
    report = Report()
    nodes, per_node, where = world(recipe, keys)
    device: Gpu = gpu(keys.get("gpu", DEFAULT_GPU))
    report.lines.append(f"world: {nodes * per_node} GPUs = {where}; memory held against {device.name} "
                        f"({device.memory_gb:g} GB)")
    family = get_family(recipe.model.family)
    size = family.size(recipe.model.size)
    counts = count_params(family, size)
    report.lines.append(f"model: {family.name} {size.name}, {counts['params_total'] / 1e9:.2f}B parameters "
                        f"(built on the meta device)")
    configs = {stage: train_config(recipe, stage, p) for stage in stages}
    loads = [cfg.checkpoint.load for cfg in configs.values() if cfg.checkpoint.load]
    report.check("convert.hf", lambda: _hf_checkpoint(recipe, family, loads))
    for stage, cfg in configs.items():
        report.check(f"{stage} tokenizer", lambda: _tokenizer(cfg, size))
        report.check(f"{stage} data", lambda: _data(recipe, cfg, p))
        layout_ok = report.check(f"{stage} layout", lambda: _layout(cfg, family, size, nodes * per_node))
        if cfg.checkpoint.load:
            report.check(f"{stage} checkpoint", lambda: _megatron_checkpoint(cfg, family))
        if layout_ok:  # memory per GPU is only defined for a layout that fits the world
            report.check(f"{stage} memory", lambda: _memory(cfg, size, counts, nodes * per_node, device))
    return report


def _hf_checkpoint(recipe: Recipe, family, loads: list[str]) -> str | None:  # noqa: ANN001
    from pai_patch.convert.engine import HfSource, Model

    if not recipe.convert.hf:
        if loads:  # a seed launcher's PRETRAIN_CHECKPOINT_PATH: a Megatron checkpoint, checked per stage
            return f"none: the job loads {', '.join(dict.fromkeys(loads))}"
        if recipe.model.size != "tiny":
            raise ValueError(f"size {recipe.model.size} starts from its published HF checkpoint; pass hf=DIR")
        return "none (tiny starts from a seeded random HF model)"
    hf = Path(resolve_path(recipe.convert.hf))
    if not (hf / "config.json").is_file():
        raise FileNotFoundError(f"{hf / 'config.json'} not found (expected an HF checkpoint directory)")
    model = Model.resolve(family, recipe.model.size, hf)
    source = HfSource(model, hf, None)  # names and shapes from the safetensors headers
    return f"{hf}: {len(source.reader.names())} tensors, names and shapes match {family.name} {recipe.model.size}"


def _tokenizer(cfg, size) -> str:  # noqa: ANN001
    from pai_patch.data.tokenizer import load_tokenizer, vocab_size
    from pai_patch.training.vocab_check import check_vocabulary

    where = cfg.tokenizer_dir()  # the job's own lookup: explicit dir, hf=, the checkpoint it loads; family checked
    tokenizer = load_tokenizer(where)
    # the datasets that exist are checked against it; those the data stage has yet to make are not there to read
    made = {key: path if path and _made(path, cfg.data.sft) else None
            for key, path in (("train_path", cfg.data.train_path), ("valid_path", cfg.data.valid_path))}
    check_vocabulary(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **made)), size, tokenizer)
    return f"{cfg.data.tokenizer} from {where} ({vocab_size(tokenizer)} ids; fits the embedding" + (
        ", and the data was made with it)" if any(made.values()) else ")")


def _made(path: str, sft: bool) -> bool:
    from pai_patch.training.vocab_check import _token_prefix

    return Path(_token_prefix(path, sft) + ".bin").is_file()


def _data(recipe: Recipe, cfg, p: Paths) -> str:  # noqa: ANN001
    from pai_patch.training.vocab_check import _token_prefix

    t, path = cfg.train, cfg.data.train_path
    if cfg.data.type == "raw":
        if not Path(path).is_file():
            raise FileNotFoundError(f"data.train_path: {path} not found (raw JSON SFT data)")
        state = "raw JSON, tokenized as it is read"
    elif _made(path, cfg.data.sft):
        state = "exists"
    elif path.startswith(str(p.data)):  # this run's own data, which its data stage makes first
        source = resolve_path(recipe.data.sft_train if cfg.data.sft else recipe.data.pretrain_input)
        if not Path(source).is_file():
            raise FileNotFoundError(f"{source} not found; the data stage makes {path} from it")
        state = f"made by the data stage from {source}"
    else:
        raise FileNotFoundError(f"data.train_path: {_token_prefix(path, cfg.data.sft)}.bin not found (expected a "
                                "Megatron .bin/.idx prefix)")
    return (f"{path} ({state}); {t.iterations} iterations x global batch {t.global_batch_size} x seq "
            f"{cfg.seq_length} = {t.iterations * t.global_batch_size * cfg.seq_length:,} tokens")


def _layout(cfg, family, size, world_size: int) -> str:  # noqa: ANN001
    from pai_patch.parallel import validate_layout

    rt, t = cfg.runtime(), cfg.train
    layout = validate_layout(size, rt, world_size, global_batch=t.global_batch_size, micro_batch=t.micro_batch_size,
                             num_experts=family.num_routed_experts(size), seq_length=cfg.seq_length)
    steps = t.global_batch_size // (t.micro_batch_size * layout.dp)
    return (f"TP={rt.tp} PP={rt.pp} CP={rt.cp} EP={rt.ep} DP={layout.dp}, SP={rt.sequence_parallel}; "
            f"{steps} micro-batch(es) of {t.micro_batch_size} per step")


def _megatron_checkpoint(cfg, family) -> str:  # noqa: ANN001
    from pai_patch.convert.engine import McoreSource, Model

    load = Path(cfg.checkpoint.load)
    if not has_checkpoint(load):
        return f"{load} (written by an earlier stage of this run)"
    # names, shapes and layout from the checkpoint's metadata; its checksums would mean reading every weight
    source = McoreSource(Model.resolve(family, cfg.model.size, load), load, verify=False)
    if source.dist is not None:
        return f"{load}: torch_dist, loads at any layout; names and shapes match"
    lay, rt = source.layout, cfg.runtime()
    if (lay.tp, lay.pp, lay.ep) != (rt.tp, rt.pp, rt.ep):
        raise ValueError(f"{load}: legacy checkpoint at TP={lay.tp} PP={lay.pp} EP={lay.ep}, but the job runs at "
                         f"TP={rt.tp} PP={rt.pp} EP={rt.ep}; convert at the job's layout or to torch_dist")
    return f"{load}: legacy at the job's layout; names and shapes match"


def _memory(cfg, size, counts, world_size: int, device: Gpu) -> str:  # noqa: ANN001
    from pai_patch.training.memory_estimate import GB, Job, estimate

    def job(**changes: object) -> Job:
        do = bool(changes.pop("do", cfg.parallel.distributed_optimizer))
        rt = dataclasses.replace(cfg.runtime(), **changes)
        return Job(rt, world_size, cfg.train.micro_batch_size, cfg.train.global_batch_size, do)

    need = estimate(size, counts, job())
    if need.total <= device.memory_gb * GB:
        return f"{need.describe()} of {device.name}'s {device.memory_gb:g}: fits"
    rt = cfg.runtime()
    hints = [("do=true", {"do": True}, world_size), ("recompute=full", {"recompute": "full"}, world_size),
             ("do=true recompute=full", {"do": True, "recompute": "full"}, world_size),
             (f"tp={rt.tp * 2}", {"tp": rt.tp * 2, "sequence_parallel": True}, world_size),
             (f"pp={rt.pp * 2}", {"pp": rt.pp * 2}, world_size)]
    # more GPUs shard what data parallelism shares (optimizer states, routed experts' states over expert DP)
    dp = world_size // (rt.tp * rt.pp * rt.cp)
    hints += [(f"{world_size * k} GPUs and a global batch that divides by {cfg.train.micro_batch_size * dp * k}",
               {"do": True}, world_size * k) for k in (2, 4, 8, 16)]
    for hint, changes, world in hints:
        if _valid(cfg, size, world, changes, batch=world == world_size):
            with_hint = estimate(size, counts, dataclasses.replace(job(**changes), world=world))
            if with_hint.total <= device.memory_gb * GB:
                raise ValueError(f"{need.describe()}: does not fit {device.name}'s {device.memory_gb:g} GB; it "
                                 f"would with {hint} ({with_hint.total / GB:.1f} GB)")
    raise ValueError(f"{need.describe()}: does not fit {device.name}'s {device.memory_gb:g} GB, nor with "
                     f"do=true, recompute=full, twice the TP or PP, or 16x the GPUs")


def _valid(cfg, size, world_size: int, changes: dict, *, batch: bool) -> bool:  # noqa: ANN001
    """Whether the layout with ``changes`` obeys megatron's rules (the global batch one only when ``batch``)."""
    from pai_patch.models import get_family
    from pai_patch.parallel import LayoutError, validate_layout

    rt = dataclasses.replace(cfg.runtime(), **{k: v for k, v in changes.items() if k != "do"})
    try:
        validate_layout(size, rt, world_size, global_batch=cfg.train.global_batch_size if batch else None,
                        micro_batch=cfg.train.micro_batch_size,
                        num_experts=get_family(cfg.model.family).num_routed_experts(size), seq_length=cfg.seq_length)
    except LayoutError:
        return False
    return True


def run(recipe: Recipe, p: Paths, overrides: list[str], stage: str = "rehearse") -> None:
    """Print the report; exit 1 when it found a problem. ``stage``: the one ``DRY_RUN=rehearse`` stood in for."""
    report = rehearse(recipe, p, overrides, (stage,) if stage in TRAINING else TRAINING)
    print(f"== rehearse {recipe.recipe} {recipe.model.size}")
    for line in report.lines:
        print(f"  ok  {line}")
    for line in report.problems:
        print(f"error: {line}")
    if report.problems:
        print(f"rehearse: {len(report.problems)} problem(s); the job would stop at the first of them")
        raise SystemExit(1)
    print("rehearse: nothing found that would stop this job before its first step")
