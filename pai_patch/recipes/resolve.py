"""Find, merge and validate a recipe; derive each stage's paths and training job."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pai_patch.checkpoint_dir import has_checkpoint
from pai_patch.configio import ConfigError, apply_overrides, from_dict, load_yaml, parse_override
from pai_patch.recipes.schema import Recipe
from pai_patch.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"

#: short names accepted on the make command line (`make recipe=qwen2_5 size=7B tp=2 pretrain`)
ALIASES = {
    "size": "model.size", "tp": "parallel.tp", "pp": "parallel.pp", "cp": "parallel.cp", "ep": "parallel.ep",
    "vp": "parallel.vp", "sp": "parallel.sequence_parallel", "do": "parallel.distributed_optimizer",
    "env": "launch.env", "nproc": "launch.nproc_per_node", "hf": "convert.hf", "output": "output_dir",
}
#: short names for a key of the training stage being run (`make recipe=qwen2_5 sft lr=1e-5`)
STAGE_ALIASES = {"lr": "optim.lr", "min_lr": "optim.min_lr"}
TRAINING_STAGES = ("pretrain", "sft")
#: make-level switches that are not recipe keys
#: the world and the GPU `rehearse` checks a job against: `gpus=8 nodes=4 gpu=H800`
REHEARSE_KEYS = ("gpu", "gpus", "nodes")
NOT_RECIPE_KEYS = {"recipe", "DRY_RUN", "VENV", "PYTHON_BOOT", *REHEARSE_KEYS}


def available() -> list[str]:
    return sorted(p.parent.name for p in RECIPES.glob("*/recipe.yaml"))


def recipe_file(name: str) -> Path:
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise FileNotFoundError(f"{candidate}: no such recipe file")
        return candidate
    path = RECIPES / name / "recipe.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {name!r}; valid recipes: {', '.join(available())}")
    return path


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(items: list[str], stage: str | None = None) -> list[tuple[list[str], Any]]:
    """``key=value`` items as key paths; ``STAGE_ALIASES`` go to ``stage`` when it is a training stage."""
    parsed = []
    for item in items:
        path, value = parse_override(item)
        if path[0] in NOT_RECIPE_KEYS:
            continue
        if len(path) == 1 and path[0] in ALIASES:
            path = ALIASES[path[0]].split(".")
        elif len(path) == 1 and path[0] in STAGE_ALIASES:
            if stage not in TRAINING_STAGES:
                raise ConfigError(f"{path[0]}= sets the training stage being run (`make ... pretrain {item}` or "
                                  f"`sft {item}`); for {stage or 'a whole recipe'} name the stage: "
                                  f"sft.{STAGE_ALIASES[path[0]]}={value}")
            path = [stage, *STAGE_ALIASES[path[0]].split(".")]
        parsed.append((path, value))
    return parsed


def load_recipe(name: str, overrides: list[str] | None = None, stage: str | None = None) -> Recipe:
    """The recipe with its size row and then the command-line overrides applied (``stage``: the one being run,
    which ``STAGE_ALIASES`` refer to)."""
    from pai_patch.models import get_family

    path = recipe_file(name)
    # keys starting with "_" only hold YAML anchors shared by the size rows
    raw = {k: v for k, v in load_yaml(path).items() if not k.startswith("_")}
    parsed = parse_overrides(overrides or [], stage)
    probe = apply_overrides(copy.deepcopy(raw), parsed)
    family = get_family((probe.get("model") or {}).get("family", ""))
    size = str((probe.get("model") or {}).get("size", "tiny"))
    family.size(size)  # unknown size: one line listing the valid ones
    rows = raw.get("sizes") or {}
    if size in rows:
        raw = deep_merge(raw, rows[size] or {})
    try:
        return from_dict(Recipe, apply_overrides(raw, parsed))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def resolve_path(text: str | None) -> str | None:
    """Recipe paths are relative to the repository (shipped assets) or to the working directory."""
    if text is None:
        return None
    path = Path(text).expanduser()
    if not path.is_absolute() and not path.exists() and (ROOT / path).exists():
        return str(ROOT / path)
    return str(path)


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes, under the run's output directory.

    ``planned``: a dry-run pipeline, which writes nothing; each stage is shown with the
    checkpoint the earlier stages would have written, not with what happens to exist now.
    """

    root: Path
    planned: bool = False

    def has_checkpoint(self, directory: Path) -> bool:
        return self.planned or has_checkpoint(directory)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pretrain_prefix(self) -> Path:
        return self.data / "pretrain"

    @property
    def pretrain_dataset(self) -> Path:
        return self.data / "pretrain_text_document"

    @property
    def sft_train(self) -> Path:
        return self.data / "sft_train"

    @property
    def sft_valid(self) -> Path:
        return self.data / "sft_valid"

    @property
    def hf_base(self) -> Path:
        return self.root / "hf_base"

    @property
    def mcore_base(self) -> Path:
        return self.root / "mcore_base"

    @property
    def pretrain(self) -> Path:
        return self.root / "pretrain"

    @property
    def sft(self) -> Path:
        return self.root / "sft"

    @property
    def hf_export(self) -> Path:
        return self.root / "hf_export"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def generate(self) -> Path:
        return self.root / "generate"


def paths(recipe: Recipe, *, planned: bool = False) -> Paths:
    out = recipe.output_dir or f"output/{recipe.recipe}-{recipe.model.size}"
    return Paths(Path(resolve_path(out) or out), planned)


def train_config(recipe: Recipe, stage: str, p: Paths | None = None) -> TrainConfig:
    """The training job of the pretrain or sft stage, with this run's data and checkpoints."""
    p = p or paths(recipe)
    section = getattr(recipe, stage)
    job: dict[str, Any] = {
        "model": {"family": recipe.model.family, "size": recipe.model.size},
        "parallel": vars(recipe.parallel).copy(),
        "optim": dict(section.optim),
        "train": dict(section.train),
        "data": {"tokenizer": recipe.data.tokenizer, "hf": resolve_path(recipe.convert.hf), **section.data},
        "checkpoint": dict(section.checkpoint),
        "output_dir": str(getattr(p, stage)),
    }
    data, ck = job["data"], job["checkpoint"]
    if stage == "pretrain":
        data.setdefault("train_path", str(p.pretrain_dataset))
        if "load" not in ck and p.has_checkpoint(p.mcore_base):
            ck["load"] = str(p.mcore_base)
    else:
        data["sft"] = True
        raw = data.get("type") == "raw"
        data.setdefault("train_path", resolve_path(recipe.data.sft_train) if raw else str(p.sft_train))
        data.setdefault("valid_path", resolve_path(recipe.data.sft_valid) if raw else str(p.sft_valid))
        if "load" not in ck:
            for source in (p.pretrain / "checkpoint", p.mcore_base):
                if p.has_checkpoint(source):
                    ck["load"] = str(source)
                    break
    for key in ("train_path", "valid_path"):
        data[key] = resolve_path(data.get(key))
    data["tokenizer"] = resolve_path(data["tokenizer"]) if "/" in data["tokenizer"] else data["tokenizer"]
    return from_dict(TrainConfig, job)
