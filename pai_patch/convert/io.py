"""Load a converted (or trained) Megatron-Core checkpoint into model chunks: the trainer's entry point.

``torch_dist`` checkpoints load at any TP/PP/EP/VP through each chunk's
``sharded_state_dict()``; legacy ones hold one file per rank (its virtual-pipeline chunks
as ``model0``, ``model1``, ...) and so must match the run's layout, as in Megatron-LM.  Tensors named
for the other layer spec (TE's fused layer norms vs the local spec's separate ones) are renamed, in
both formats, using every family's mapping, and ``_extra_state``
entries (TE FP8 metadata) a checkpoint lacks are kept from the model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import torch

from pai_patch.checkpoint_dir import latest_dir
from pai_patch.convert import dist, legacy
from pai_patch.convert.marker import check_before_reading


def load_model_checkpoint(model_chunks: list[torch.nn.Module], ckpt_dir: str, *, strict: bool = True,
                          verify: bool = True, override: str = "--no-verify") -> int:
    """Fill ``model_chunks`` from the checkpoint in ``ckpt_dir``; returns its iteration (0 for ``release``).

    A checkpoint whose completeness marker or checksums fail is refused unless ``verify=False``
    (``override`` is the user's switch for that, which the refusal names)."""
    iter_dir, iteration = latest_dir(ckpt_dir)
    check_before_reading(Path(ckpt_dir), iter_dir, iteration, verify=verify, override=override)
    if dist.is_dist(iter_dir):
        _load_dist(model_chunks, iter_dir, strict)
    else:
        _load_legacy(model_chunks, iter_dir, strict)
    return iteration


def _chunk_keys(n: int) -> list[str]:
    """Megatron's nesting: ``model`` for one chunk, ``model0``, ``model1``, ... for virtual pipeline."""
    return ["model"] if n == 1 else [f"model{i}" for i in range(n)]


def _load_dist(chunks: list[torch.nn.Module], iter_dir: Path, strict: bool) -> None:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedObject
    from megatron.core.dist_checkpointing.serialization import load_sharded_metadata

    available = set(load_sharded_metadata(str(iter_dir)))
    request, missing = {}, []
    for key, chunk in zip(_chunk_keys(len(chunks)), chunks):
        wanted = {}
        for name, sharded in chunk.sharded_state_dict().items():
            if isinstance(sharded, ShardedObject):
                if sharded.unique_key in available:
                    wanted[name] = sharded
            elif (found := dist_key(sharded.key, available)) is not None:
                sharded.key = found  # a fresh sharded dict: renaming it changes only what is read
                wanted[name] = sharded
            else:
                missing.append(sharded.key)
        request[key] = wanted
    if missing and strict:
        raise ValueError(f"{iter_dir}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                       if len(missing) > 1 else ""))
    loaded = dist_checkpointing.load(request, str(iter_dir))
    for key, chunk in zip(request, chunks):
        _apply(chunk, loaded[key], strict=False)


def dist_key(key: str, available: set[str]) -> str | None:
    """The checkpoint's key for the model's ``key``: itself, else its name in the other layer spec.

    megatron-core's dense local spec saves its norms under the TE names, but the MLA one does
    not (DeepSeek-V2's ``kv_layernorm.weight`` vs TE's ``linear_kv_up_proj.layer_norm_weight``,
    layer 0's ``pre_mlp_layernorm.weight`` vs ``mlp.linear_fc1.layer_norm_weight``).  None if
    the checkpoint has neither.
    """
    if key in available:
        return key
    return next((renamed for renamed in _renames(key) if renamed in available), None)


def _load_legacy(chunks: list[torch.nn.Module], iter_dir: Path, strict: bool) -> None:
    from megatron.core import parallel_state as ps

    layout = legacy.LegacyLayout.detect(iter_dir)
    pp = ps.get_pipeline_model_parallel_world_size()
    run = legacy.LegacyLayout(ps.get_tensor_model_parallel_world_size(), pp,
                              ps.get_expert_model_parallel_world_size(), len(chunks),
                              chunks[0].config.num_layers_in_first_pipeline_stage if pp > 1 else None)
    if layout != run:
        raise ValueError(f"{iter_dir}: legacy checkpoint written for {layout.describe()}, but this run uses "
                         f"{run.describe()}; convert again with matching --tp/--pp/--ep/--vp/--pp0-layers, "
                         "or use --format torch_dist, which loads at any layout")
    path = layout.path(iter_dir, ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                       ps.get_expert_model_parallel_rank())
    states = legacy.model_state(legacy.load_file(path), path)
    if len(states) != len(chunks):
        raise ValueError(f"{path}: {len(states)} model chunk(s), but this run built {len(chunks)} (virtual pipeline)")
    for chunk, state in zip(chunks, states):
        _apply(chunk, _translate(state, chunk.state_dict()), strict=strict, path=path)


def _apply(chunk: torch.nn.Module, state: dict, *, strict: bool, path: Path | None = None) -> None:
    """``load_state_dict`` keeping the model's own ``_extra_state`` where the checkpoint has none."""
    own = chunk.state_dict()
    state = {**{k: v for k, v in own.items() if k.endswith("._extra_state")}, **state}
    result = chunk.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        problem = (f"missing tensor {result.missing_keys[0]}" if result.missing_keys
                   else f"unexpected tensor {result.unexpected_keys[0]}")
        raise ValueError(f"{path}: {problem} for this model")


def _translate(state: dict, own: dict) -> dict:
    """Rename tensors of the other layer spec (TE <-> local) to the names this model uses."""
    out = {}
    for name, tensor in state.items():
        if name not in own:
            if name.endswith("._extra_state"):
                continue
            name = next((renamed for renamed in _renames(name) if renamed in own), name)
        out[name] = tensor
    return out


def _renames(name: str) -> Iterator[str]:
    for source, target in _spec_pairs():
        if match := source.fullmatch(name):
            yield target.format(**match.groupdict())


_PAIRS: list[tuple[re.Pattern, str]] | None = None


def _spec_pairs() -> list[tuple[re.Pattern, str]]:
    """(pattern, template) for each local<->TE name pair in any registered family's mapping."""
    global _PAIRS
    if _PAIRS is None:
        from pai_patch.models import families

        _PAIRS = []
        for family in families().values():
            for rule in family.weight_mapping().rules:
                if rule.te:
                    _PAIRS += [(_pattern(rule.mcore), rule.te), (_pattern(rule.te), rule.mcore)]
    return _PAIRS


def _pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{layer\}", r"(?P<layer>\d+)").replace(r"\{expert\}", r"(?P<expert>\d+)")
    return re.compile(escaped)
