"""HF checkpoints of the published shapes that cost no disk: real headers, sparse data regions.

Each safetensors file is its header plus a seek to where the data would end, so a 236B model's
checkpoint takes a few kilobytes; every path that reads only headers (rehearse, the converter's
checks) sees exactly what the published checkpoint would show it.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import torch

from pai_patch.convert.safetensors_stream import INDEX, _header, _itemsize, _numel
from pai_patch.data.tokenizer import SHIPPED

#: tensors per file, as published checkpoints shard (the names an index maps still resolve per file)
PER_FILE = 400


def write_sparse_hf(family_name: str, size_name: str, out: Path, *, dtype: torch.dtype = torch.bfloat16) -> Path:
    """``out`` with config.json, the shipped tokenizer and sparse ``model-*.safetensors`` of the size's shapes."""
    from pai_patch.convert.engine import Model
    from pai_patch.models import get_family

    family = get_family(family_name)
    size = family.size(size_name)
    out.mkdir(parents=True, exist_ok=True)
    family.hf_config(size).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (SHIPPED / name).is_file():
            shutil.copyfile(SHIPPED / name, out / name)
    model = Model.resolve(family, size_name, out)
    names = sorted({n for g in model.groups for item in g.items for n in item.hf_names})
    chunks = [names[i:i + PER_FILE] for i in range(0, len(names), PER_FILE)]
    weight_map, total = {}, 0
    for k, chunk in enumerate(chunks):
        file = f"model-{k + 1:05d}-of-{len(chunks):05d}.safetensors"
        items = [(n, tuple(model.shapes[n]), dtype) for n in chunk]
        header = _header(items)
        data = sum(_numel(shape) * _itemsize(dtype) for _, shape, _ in items)
        with open(out / file, "wb") as handle:
            handle.write(struct.pack("<Q", len(header)) + header)
            handle.truncate(8 + len(header) + data)
        weight_map.update(dict.fromkeys(chunk, file))
        total += data
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return out
