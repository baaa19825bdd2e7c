"""megatron-core ``torch_dist`` checkpoints, written and read a few tensors at a time.

A torch_dist checkpoint is a PyTorch-DCP directory: ``*.distcp`` data files, one pickled
``.metadata`` listing every tensor's global shape and where each stored chunk lives,
megatron's ``metadata.json`` and ``common.pt``.  Saving the whole model in one
``dist_checkpointing.save`` call would hold it all in memory, so each tensor group is
saved on its own (a single process may save part of a tensor: DCP checks coverage only
across ranks) and the per-group ``.metadata`` files are merged, as megatron-core's own
``remove_sharded_tensors`` rewrites it.  Keys follow ``model.sharded_state_dict()``:
layers (and experts) are leading axes of one stacked tensor.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from pai_patch.convert.layout import Item
from pai_patch.convert.mapping import Scope

METADATA = ".metadata"


def is_dist(iter_dir: Path) -> bool:
    return (iter_dir / "metadata.json").exists()


def _axes(item: Item, stacked: bool, num_layers: int, num_experts: int) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """(key, offsets, sizes) of ``item``'s torch_dist tensor and of its stacked leading axes."""
    scope = item.rule.scope
    layer_axis = scope is not Scope.MODEL and stacked
    key = item.rule.dist_key(None if layer_axis or scope is Scope.MODEL else item.layer)
    offsets = ((item.layer,) if layer_axis else ()) + ((item.expert,) if scope is Scope.EXPERT else ())
    sizes = ((num_layers,) if layer_axis else ()) + ((num_experts,) if scope is Scope.EXPERT else ())
    return key, offsets, sizes


def sharded(item: Item, data: torch.Tensor, full: tuple[int, ...], row: int, *, stacked: bool, num_layers: int,
            num_experts: int) -> Any:
    """The ShardedTensor for rows ``row:row+len(data)`` of ``item``'s full tensor.

    The stacked axes are given as real size-1 dimensions of the data (not megatron's
    ``prepend_axis_num``), which lets a chunk start at any row: DCP stores chunks by
    offset, and readers at any layout find them the same way.
    """
    from megatron.core.dist_checkpointing import ShardedTensor

    key, offsets, sizes = _axes(item, stacked, num_layers, num_experts)
    data = data.reshape((1,) * len(offsets) + tuple(data.shape))
    return ShardedTensor(
        key=key, data=data, dtype=data.dtype, local_shape=tuple(data.shape),
        global_shape=sizes + tuple(full), global_offset=offsets + (row,) + (0,) * (len(full) - 1),
        axis_fragmentations=None, replica_id=0,
    )


class DistWriter:
    """Saves groups of ShardedTensors one DCP ``save`` at a time, then merges their metadata.

    The DCP save runs in this process with megatron-core's planner and translation of
    ShardedTensors (what ``dist_checkpointing.save`` does, minus its forked writer
    processes, which would dominate the time of a save per layer).
    """

    def __init__(self, iter_dir: Path, common: dict[str, Any]) -> None:
        from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config

        self.iter_dir = iter_dir
        self.metadata: Any = None
        self.pieces = 0
        iter_dir.mkdir(parents=True)
        torch.save(common, iter_dir / "common.pt")
        save_config(CheckpointingConfig("torch_dist", 1), str(iter_dir))

    def save(self, tensors: dict[str, Any]) -> None:
        from megatron.core.dist_checkpointing.strategies.torch import (
            MCoreSavePlanner, _replace_state_dict_keys_with_sharded_keys, mcore_to_pyt_state_dict)
        from torch.distributed import checkpoint as dcp

        piece = self.iter_dir / f".piece{self.pieces:05d}"
        by_key, _, _ = _replace_state_dict_keys_with_sharded_keys({"model": tensors})
        dcp.save(mcore_to_pyt_state_dict(by_key, False), no_dist=True,
                 storage_writer=dcp.FileSystemWriter(piece, single_file_per_rank=True, sync_files=False),
                 planner=MCoreSavePlanner(flatten_state_dict=False, can_run_decentralized_global_plan=False))
        with open(piece / METADATA, "rb") as handle:
            metadata = pickle.load(handle)
        renamed = {}
        for path in piece.glob("*.distcp"):
            renamed[path.name] = f"__{self.pieces}_{path.name.lstrip('_')}"
            path.rename(self.iter_dir / renamed[path.name])
        for info in metadata.storage_data.values():
            info.relative_path = renamed[info.relative_path]
        if self.metadata is None:
            self.metadata = metadata
        else:
            _merge(self.metadata, metadata)
        shutil.rmtree(piece)
        self.pieces += 1

    def finish(self) -> None:
        with open(self.iter_dir / METADATA, "wb") as handle:
            pickle.dump(self.metadata, handle)


def _merge(into: Any, other: Any) -> None:
    """Add ``other``'s chunks and storage locations to ``into`` (DCP ``Metadata``)."""
    for key, meta in other.state_dict_metadata.items():
        if key not in into.state_dict_metadata:
            into.state_dict_metadata[key] = meta
        else:
            into.state_dict_metadata[key].chunks.extend(meta.chunks)
    into.storage_data.update(other.storage_data)
    if isinstance(into.planner_data, dict) and isinstance(other.planner_data, dict):
        into.planner_data.update(other.planner_data)


class DistReader:
    """Reads full tensors (or row blocks) of any torch_dist checkpoint, whatever TP/PP/EP wrote it."""

    def __init__(self, iter_dir: Path, *, stacked: bool, num_layers: int, num_experts: int) -> None:
        from megatron.core import dist_checkpointing

        self.iter_dir = iter_dir
        self.layout = dict(stacked=stacked, num_layers=num_layers, num_experts=num_experts)
        self.tensors = dist_checkpointing.load_tensors_metadata(str(iter_dir))

    def key(self, item: Item) -> str:
        return _axes(item, **self.layout)[0]

    def shape(self, item: Item) -> tuple[int, ...] | None:
        """The full (unstacked) shape stored for ``item``; None when the checkpoint lacks its key."""
        key, offsets, _ = _axes(item, **self.layout)
        meta = self.tensors.get(key)
        return None if meta is None else tuple(meta.global_shape[len(offsets):])

    def dtype(self, item: Item) -> torch.dtype:
        return self.tensors[self.key(item)].dtype

    def read(self, requests: list[tuple[Item, slice]]) -> list[torch.Tensor]:
        """Rows ``rows`` of each item's full tensor, in one DCP load."""
        from megatron.core import dist_checkpointing

        if not requests:
            return []
        state = {}
        for n, (item, rows) in enumerate(requests):
            meta = self.tensors[self.key(item)]
            full = self.shape(item)
            data = torch.empty((rows.stop - rows.start, *full[1:]), dtype=meta.dtype)
            state[str(n)] = sharded(item, data, full, rows.start, **self.layout)
        loaded = dist_checkpointing.load({"model": state}, str(self.iter_dir), validate_access_integrity=False)
        return [loaded["model"][str(n)].reshape(state[str(n)].local_shape[-len(self.shape(item)):])
                for n, (item, _) in enumerate(requests)]
