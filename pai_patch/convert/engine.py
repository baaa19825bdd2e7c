"""The conversion engine: HF safetensors <-> Megatron-Core (legacy or torch_dist), group by group.

Everything model-specific comes from the family's :class:`~pai_patch.convert.mapping.WeightMapping`;
this module only streams: it checks the whole input first (names, shapes, layout), then
converts one tensor group (a decoder layer, or the embeddings) at a time, writing under
a temporary name renamed into place at the end.  Tensors larger than ``BLOCK_BYTES`` that
need no fusing (embeddings, output layer) move in row blocks, so peak memory is about one
layer, not the model.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from torch.distributed.checkpoint.api import CheckpointException
from tqdm import tqdm

from pai_patch.checkpoint_dir import RELEASE, TRACKER, iteration_dir, latest_dir
from pai_patch.convert import dist, legacy
from pai_patch.convert.layout import (Group, Item, StageMap, check_layout, full_shape, groups, hf_shapes,
                                      local_expert, shard, to_hf, to_mcore, unshard)
from pai_patch.convert.mapping import Fuse, Scope, Split, WeightMapping
from pai_patch.convert.marker import check_before_reading, describe_files, write_marker
from pai_patch.convert.safetensors_stream import INDEX, SafetensorsReader, ShardedSafetensorsWriter
from pai_patch.data.tokenizer import copy_tokenizer_files
from pai_patch.models.base import ModelSize, read_hf_config
from pai_patch.utils import atomic_path, require_space, short_write_error

if TYPE_CHECKING:
    from pai_patch.models.base import ModelFamily

BLOCK_BYTES = 64 << 20
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: files of an HF checkpoint directory that are weights (everything else is copied by mcore2hf)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


@dataclass(frozen=True)
class Model:
    """A family at a size, with its mapping and the expected HF shapes."""

    family: "ModelFamily"
    size: ModelSize
    mapping: WeightMapping
    shapes: dict[str, tuple[int, ...]]
    groups: list[Group]

    @classmethod
    def resolve(cls, family: "ModelFamily", size_name: str | None, hf_dir: Path) -> "Model":
        """The size row named, or the one read from ``hf_dir/config.json``."""
        config = hf_dir / "config.json"
        if size_name:
            size = family.size(size_name)
        elif config.exists():
            size = family.size_from_config(config)
        else:
            raise FileNotFoundError(f"{config}: missing, and no --size given to know the model's shape")
        mapping = family.weight_mapping()
        return cls(family, size, mapping, hf_shapes(family, size), groups(mapping, size))

    def full_shape(self, item: Item) -> tuple[int, ...]:
        return full_shape(item, self.shapes, self.size)

    @property
    def num_experts(self) -> int:
        return self.mapping.num_experts(self.size)

    @property
    def dist_layout(self) -> dict[str, object]:
        """How torch_dist keys and axes are laid out for this model (see :mod:`pai_patch.convert.dist`)."""
        return dict(stacked=self.mapping.stacked_layers(self.size), num_layers=self.size.num_layers,
                    num_experts=self.num_experts)

    def row_blocks(self, item: Item, dtype: torch.dtype) -> list[slice]:
        """Row ranges to move ``item`` in: one, unless it is large and needs no fusing."""
        shape = self.full_shape(item)
        rows = shape[0]
        row_bytes = torch.empty(shape[1:], dtype=dtype, device="meta").numel() * dtype.itemsize
        if item.rule.fuse is not Fuse.NONE or rows * row_bytes <= BLOCK_BYTES:
            return [slice(0, rows)]
        step = max(1, BLOCK_BYTES // row_bytes)
        return [slice(a, min(a + step, rows)) for a in range(0, rows, step)]


def _progress(group_list: list[Group], what: str) -> Iterator[Group]:
    bar = tqdm(group_list, desc=what, unit="group", dynamic_ncols=True)
    for group in bar:
        bar.set_postfix_str(group.name)
        yield group


def _ensure_absent(path: Path) -> None:
    if path.exists():
        raise ValueError(f"{path}: target exists; remove it or choose another directory (nothing was written)")


# ---- HF -> Megatron ---------------------------------------------------------------------
class HfSource:
    """Full Megatron tensors computed from an HF checkpoint, after checking it is complete and well-shaped."""

    def __init__(self, model: Model, hf_dir: Path, dtype: torch.dtype | None) -> None:
        self.model = model
        self.reader = SafetensorsReader(hf_dir)
        self.dtype = dtype
        expected = {n for g in model.groups for i in g.items for n in i.hf_names}
        found = self.reader.names()
        for name in sorted(expected & found):  # shapes first: a wrong --size shows as the embedding's shape
            want, got = model.shapes.get(name), self.reader.entries[name].shape
            if want is not None and tuple(want) != got:
                raise ValueError(f"{hf_dir}: tensor {name} has shape {list(got)}, but size "
                                 f"{model.size.name} of {model.family.name} needs {list(want)}")
        if missing := sorted(expected - found):
            raise ValueError(f"{hf_dir}: missing tensor {missing[0]}" + _more(missing))
        if extra := sorted(found - expected - self._tied_copy(hf_dir, found - expected)):
            raise ValueError(f"{hf_dir}: unexpected tensor {extra[0]} (not in the {model.family.name} mapping)"
                             + _more(extra))

    def _tied_copy(self, hf_dir: Path, extra: set[str]) -> set[str]:
        """The output layer a tied checkpoint stores anyway (Qwen3-0.6B's ``lm_head.weight``), when it
        equals the embedding: the model has one table for both, so the copy is checked and skipped."""
        rules = {rule.mcore: rule for rule in self.model.mapping.rules}
        embedding, output = (rules.get(name) for name in self.model.mapping.tied)
        if not self.model.size.tie_embeddings or embedding is None or output is None or output.hf[0] not in extra:
            return set()
        copy, table = output.hf[0], embedding.hf[0]
        entry = self.reader.entries[copy]
        same = entry.shape == self.reader.entries[table].shape
        step = max(1, BLOCK_BYTES // max(entry.row_bytes, 1))
        for first in range(0, entry.shape[0] if same else 0, step):  # row blocks: a 0.6B table is 311 MB
            rows = slice(first, min(first + step, entry.shape[0]))
            same = torch.equal(self.reader.read(copy, rows), self.reader.read(table, rows))
            if not same:
                break
        if not same:
            raise ValueError(f"{hf_dir}: tensor {copy} differs from {table}, but config.json ties them "
                             f"(tie_word_embeddings true); expected a copy of the embedding or no {copy}")
        return {copy}

    def out_dtype(self, item: Item) -> torch.dtype:
        return self.dtype or self.reader.entries[item.hf_names[0]].dtype

    def read(self, item: Item, rows: slice | None = None) -> torch.Tensor:
        """Rows ``rows`` of ``item``'s full tensor (the vocabulary padding is zeros)."""
        dtype = self.out_dtype(item)
        if rows is None:
            return to_mcore(item, [self.reader.read(n).to(dtype) for n in item.hf_names], self.model.size)
        name = item.hf_names[0]
        have = self.reader.entries[name].shape[0]
        block = self.reader.read(name, slice(min(rows.start, have), min(rows.stop, have))).to(dtype)
        if block.shape[0] < rows.stop - rows.start:
            block = torch.cat([block, block.new_zeros(rows.stop - rows.start - block.shape[0], *block.shape[1:])])
        return block


def hf_to_mcore(family: "ModelFamily", size_name: str | None, hf_dir: Path, out_dir: Path, *, tp: int = 1,
                pp: int = 1, ep: int = 1, vp: int | None = None, pp0_layers: int | None = None,
                fmt: str = "torch_dist", dtype: str | None = None, use_te: bool = False) -> Model:
    """Convert an HF checkpoint into a Megatron-Core ``release`` checkpoint at ``out_dir``.

    ``vp`` (virtual-pipeline chunks per stage) and ``pp0_layers`` (layers on the first stage)
    shape legacy files, which hold one rank's chunks; torch_dist loads at any layout. The HF tokenizer and
    config files go next to the tracker file, as the original toolkit does, so a later stage that loads this
    checkpoint finds its tokenizer without being told where the HF checkpoint is.
    """
    _ensure_absent(out_dir)
    model = Model.resolve(family, size_name, hf_dir)
    check_layout(model.size, model.mapping, tp, pp, ep, vp=vp, pp0_layers=pp0_layers)
    source = HfSource(model, hf_dir, DTYPES[dtype] if dtype else None)
    require_space(out_dir, sum(math.prod(model.full_shape(item)) * source.out_dtype(item).itemsize
                               for group in model.groups for item in group.items))
    with atomic_path(out_dir, is_dir=True) as tmp:
        iter_dir = iteration_dir(tmp, None)
        meta = {"family": family.name, "size": model.size.as_dict(), "tp": tp, "pp": pp, "ep": ep, "vp": vp,
                "pp0_layers": pp0_layers if pp > 1 else None, "use_te": use_te}
        try:
            if fmt == "torch_dist":
                _write_dist(model, source, iter_dir, meta)
            else:
                layout = legacy.LegacyLayout(tp, pp, ep, vp or 1, meta["pp0_layers"])
                _write_legacy(model, source, iter_dir, meta, layout, use_te)
        except (RuntimeError, CheckpointException) as err:  # torch's writer on a full disk: "unexpected pos 704 vs 598"
            raise short_write_error(err, out_dir) or err from err
        copy_tokenizer_files(hf_dir, tmp)
        write_marker(iter_dir, describe_files(iter_dir))  # readers then refuse it if damaged, as a trainer's save
        (tmp / TRACKER).write_text(RELEASE)
    return model


def _write_dist(model: Model, source: HfSource, iter_dir: Path, meta: dict) -> None:
    """One ``save`` per group; a large unfused tensor is saved one row block at a time."""
    writer = dist.DistWriter(iter_dir, {"iteration": 0, "checkpoint_version": legacy.CHECKPOINT_VERSION,
                                        "pai_patch": meta})
    for group in _progress(model.groups, "hf2mcore"):
        pieces = {}
        for item in group.items:
            shape = model.full_shape(item)
            blocks = model.row_blocks(item, source.out_dtype(item))
            if len(blocks) == 1:
                pieces[item.label] = dist.sharded(item, source.read(item), shape, 0, **model.dist_layout)
                continue
            for rows in blocks:
                writer.save({item.label: dist.sharded(item, source.read(item, rows), shape, rows.start,
                                                      **model.dist_layout)})
        if pieces:
            writer.save(pieces)
    writer.finish()


def _write_legacy(model: Model, source: HfSource, iter_dir: Path, meta: dict, layout: legacy.LegacyLayout,
                  use_te: bool) -> None:
    """One pipeline stage in memory at a time (a rank file is a single ``torch.save``)."""
    tp, pp, ep, experts = layout.tp, layout.pp, layout.ep, model.num_experts
    stages = StageMap(model.size.num_layers, pp, layout.vp, layout.pp0_layers)
    embedding, output = model.mapping.tied
    by_stage: dict[int, list[Group]] = {}
    for group in model.groups:
        by_stage.setdefault(stages.place(group)[0], []).append(group)
    bar = tqdm(total=len(model.groups), desc="hf2mcore", unit="group", dynamic_ncols=True)
    for stage in range(pp):
        files = {(t, e): [{} for _ in range(layout.vp)] for t in range(tp) for e in range(ep)}
        for group in by_stage.get(stage, []):
            bar.set_postfix_str(group.name)
            _, chunk, first_layer = stages.place(group)
            for item in group.items:
                full = source.read(item)
                layer = None if item.layer is None else item.layer - first_layer
                ep_ranks, expert = range(ep), None
                if item.rule.scope is Scope.EXPERT:
                    ep_rank, expert = local_expert(item.expert, experts, ep)
                    ep_ranks = range(ep_rank, ep_rank + 1)
                name = item.mcore_name(te=use_te, layer=layer, expert=expert)
                for t in range(tp):
                    piece = shard(item.rule, full, tp, t)
                    for e in ep_ranks:
                        files[(t, e)][chunk][name] = piece
            bar.update()
        if stage == pp - 1 and stage > 0 and model.size.tie_embeddings:
            # megatron keeps the output layer on the last stage even when tied; it is synced to the embedding
            tied_item = next(i for g in model.groups for i in g.items if i.rule.mcore == embedding)
            full = source.read(tied_item)
            for (t, _), chunks in files.items():
                chunks[-1][output] = shard(tied_item.rule, full, tp, t)
        for (t, e), chunks in files.items():
            legacy.save_file(layout.path(iter_dir, t, stage, e), chunks, meta, 0)
    bar.close()


# ---- Megatron -> HF ---------------------------------------------------------------------
class McoreSource:
    """Full Megatron tensors from a legacy or torch_dist checkpoint (a trainer's checkpoint included)."""

    def __init__(self, model: Model, ckpt_dir: Path, *, verify: bool = True) -> None:
        self.model = model
        self.iter_dir, iteration = latest_dir(ckpt_dir)
        check_before_reading(ckpt_dir, self.iter_dir, iteration, verify=verify)
        self.dist = dist.DistReader(self.iter_dir, **model.dist_layout) if dist.is_dist(self.iter_dir) else None
        if self.dist is None:
            self.layout = legacy.LegacyLayout.detect(self.iter_dir)
            self.stages = StageMap(model.size.num_layers, self.layout.pp, self.layout.vp, self.layout.pp0_layers)
            self._stage: tuple[int, dict[tuple[int, int], list[dict[str, torch.Tensor]]]] | None = None
        self._check()

    def _check(self) -> None:
        for group in self.model.groups:
            for item in group.items:
                want = self.model.full_shape(item)
                if self.dist is not None:
                    got = self.dist.shape(item)
                    if got is None:
                        raise ValueError(f"{self.iter_dir}: missing tensor {self.dist.key(item)} (for {item.label})")
                    if got != want:
                        raise ValueError(f"{self.iter_dir}: tensor {self.dist.key(item)} has shape {list(got)}, but "
                                         f"size {self.model.size.name} of {self.model.family.name} needs {list(want)}")
        if self.dist is None:
            lay = self.layout
            check_layout(self.model.size, self.model.mapping, lay.tp, lay.pp, lay.ep,
                         vp=lay.vp if lay.vp > 1 else None, pp0_layers=lay.pp0_layers)

    def dtype(self) -> torch.dtype:
        first = self.model.groups[0].items[0]
        if self.dist is not None:
            return self.dist.dtype(first)
        return next(self.read_group(self.model.groups[0]))[2].dtype

    def read_group(self, group: Group) -> Iterator[tuple[Item, slice, torch.Tensor]]:
        """(item, rows, tensor): full tensors, or row blocks of large unfused ones (torch_dist), in order."""
        if self.dist is not None:
            blocked = [(item, self.model.row_blocks(item, self.dist.dtype(item))) for item in group.items]
            whole = [(item, blocks[0]) for item, blocks in blocked if len(blocks) == 1]
            loaded = dict(zip([item for item, _ in whole], self.dist.read(whole)))
            for item, blocks in blocked:
                if item in loaded:
                    yield item, blocks[0], loaded.pop(item)
                    continue
                for rows in blocks:  # one load per block keeps memory at one block
                    yield item, rows, self.dist.read([(item, rows)])[0]
            return
        stage = self.stages.place(group)[0]
        files = self._load_stage(stage)
        for item in group.items:
            full = self._legacy_full(item, group, files)
            yield item, slice(0, full.shape[0]), full

    def _load_stage(self, stage: int) -> dict[tuple[int, int], list[dict[str, torch.Tensor]]]:
        if self._stage is None or self._stage[0] != stage:
            self._stage = None  # drop the previous stage before loading the next
            lay = self.layout
            files = {}
            for t in range(lay.tp):
                for e in range(lay.ep):
                    path = lay.path(self.iter_dir, t, stage, e)
                    chunks = legacy.model_state(legacy.load_file(path), path)
                    if len(chunks) != lay.vp:
                        raise ValueError(f"{path}: {len(chunks)} model chunk(s), but the checkpoint's layout "
                                         f"({lay.describe()}) has {lay.vp} per rank file")
                    files[(t, e)] = chunks
            self._check_names(stage, files)
            self._stage = (stage, files)
        return self._stage[1]

    def _check_names(self, stage: int, files: dict[tuple[int, int], list[dict[str, torch.Tensor]]]) -> None:
        """Every tensor in a rank file's chunk must be one the mapping knows (or a TE ``_extra_state``)."""
        known: list[set[str]] = [set() for _ in range(self.layout.vp)]
        known[-1].add(self.model.mapping.tied[1])
        for group in self.model.groups:
            group_stage, chunk, first_layer = self.stages.place(group)
            if group_stage == stage:
                known[chunk].update(self._name(item, first_layer, te) for item in group.items for te in (False, True))
        for (t, e), chunks in files.items():
            for chunk, state in enumerate(chunks):
                extra = sorted(k for k in state if k not in known[chunk] and not k.endswith("._extra_state"))
                if extra:
                    path = self.layout.path(self.iter_dir, t, stage, e)
                    where = f" (chunk model{chunk})" if self.layout.vp > 1 else ""
                    raise ValueError(f"{path}: unexpected tensor {extra[0]}{where} (not in the "
                                     f"{self.model.family.name} mapping)" + _more(extra))

    def _name(self, item: Item, first_layer: int, te: bool) -> str:
        layer = None if item.layer is None else item.layer - first_layer
        expert = None
        if item.expert is not None:
            expert = local_expert(item.expert, self.model.num_experts, self.layout.ep)[1]
        return item.mcore_name(te=te, layer=layer, expert=expert)

    def _legacy_full(self, item: Item, group: Group,
                     files: dict[tuple[int, int], list[dict[str, torch.Tensor]]]) -> torch.Tensor:
        stage, chunk, first_layer = self.stages.place(group)
        ep_rank = 0 if item.expert is None else local_expert(item.expert, self.model.num_experts, self.layout.ep)[0]
        pieces = []
        for t in range(self.layout.tp):
            state = files[(t, ep_rank)][chunk]
            names = [self._name(item, first_layer, te) for te in (False, True)]
            name = next((n for n in names if n in state), None)
            if name is None:
                path = self.layout.path(self.iter_dir, t, stage, ep_rank)
                where = f" (chunk model{chunk})" if self.layout.vp > 1 else ""
                raise ValueError(f"{path}: missing tensor {names[0]}{where}")
            pieces.append(state[name])
        full = unshard(item.rule, pieces)
        want = self.model.full_shape(item)
        if tuple(full.shape) != want:
            raise ValueError(f"{self.iter_dir}: tensor {item.label} has shape {list(full.shape)} after joining "
                             f"TP={self.layout.tp} pieces, but size {self.model.size.name} needs {list(want)}")
        return full


def mcore_to_hf(family: "ModelFamily", size_name: str | None, ckpt_dir: Path, out_dir: Path,
                source_hf: Path | None = None, *, dtype: str | None = None, max_shard_bytes: int = 2 << 30,
                verify: bool = True) -> Model:
    """Convert a Megatron-Core checkpoint into an HF directory loadable by ``from_pretrained``.

    The config and tokenizer come from ``source_hf``, else from the copies ``hf2mcore`` and training
    leave in the checkpoint directory. ``verify=False`` skips the check of the checkpoint's completeness
    marker and checksums.
    """
    _ensure_absent(out_dir)
    side = source_hf or ckpt_dir
    if not (side / "config.json").exists():
        fix = "--source-hf must be" if source_hf else "the checkpoint carries no HF config; pass --source-hf,"
        raise FileNotFoundError(f"{side / 'config.json'}: missing; {fix} the HF checkpoint the config and "
                                "tokenizer come from")
    model = Model.resolve(family, size_name, side)
    source = McoreSource(model, ckpt_dir, verify=verify)
    out_dtype = DTYPES[dtype] if dtype else source.dtype()
    plan = [(name, model.shapes[name], out_dtype) for g in model.groups for i in g.items for name in i.hf_names]
    with atomic_path(out_dir, is_dir=True) as tmp:
        writer = ShardedSafetensorsWriter(tmp, plan, max_shard_bytes)
        for group in _progress(model.groups, "mcore2hf"):
            for item, rows, block in source.read_group(group):
                for name, tensor in zip(item.hf_names, _hf_block(item, rows, block, model)):
                    if tensor.numel():
                        writer.write(name, tensor.to(out_dtype))
        writer.finish()
        if source_hf:
            _copy_hf_side(source_hf, tmp)
        else:  # only the HF files: the checkpoint directory also holds Megatron's own
            copy_tokenizer_files(ckpt_dir, tmp)
        _write_config(side, tmp, out_dtype)
    return model


def _hf_block(item: Item, rows: slice, block: torch.Tensor, model: Model) -> list[torch.Tensor]:
    """HF tensors of a full tensor, or the HF rows of a row block of an unfused one."""
    if rows.stop - rows.start == model.full_shape(item)[0]:
        return to_hf(item, block, model.size)
    if item.rule.split is Split.VOCAB:
        return [block[: max(0, model.size.vocab_size - rows.start)]]  # the padding rows are not HF's
    return [block]


def _copy_hf_side(source_hf: Path, out: Path) -> None:
    """Every file of the source HF checkpoint but its weights (tokenizer, generation config, license ...)."""
    for path in source_hf.iterdir():
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and path.name not in (INDEX, "config.json"):
            shutil.copy2(path, out / path.name)


def _write_config(source: Path, out: Path, dtype: torch.dtype) -> None:
    """``source``'s config.json with the dtype of the weights written."""
    config = read_hf_config(source / "config.json")
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    config["torch_dtype" if "torch_dtype" in config else "dtype"] = name
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more: {', '.join(names[1:4])}{', ...' if len(names) > 4 else ''})" \
        if len(names) > 1 else ""
