"""Recipe locks: what a recipe was validated with, what a run actually ran with, and the diff.

A recipe's ``lock:`` section pins the image tag, the versions the image builds with (parsed
from ``docker/Dockerfile``), the CPU venv's versions (from ``requirements.lock``; TE and
flash-attn are absent there) and the SHA-256 of every file it names: raw datasets, tokenizer
files and the tokenized datasets the data stage derives from them (tokenization is
deterministic, so those hashes are part of what "the same data" means).

Every run writes ``lock.json`` into its output directory with the same fields measured at run
time.  Files are keyed by *role* (``data.pretrain_input``, ``tokenizer/tokenizer.json``,
``dataset.pretrain/.bin``) rather than path, so a run in ``/tmp/x`` is comparable with the
recipe's ``output/...`` layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from pai_patch.data.indexed import dataset_prefix
from pai_patch.data.sidecar import SUFFIX as SIDECAR_SUFFIX
from pai_patch.recipes.resolve import ROOT, resolve_path

#: package -> distribution name; these are the versions a lock pins
PACKAGES = {"torch": "torch", "megatron-core": "megatron-core", "transformers": "transformers",
            "transformer-engine": "transformer_engine", "flash-attn": "flash-attn"}
#: docker/Dockerfile build argument -> lock key
DOCKER_ARGS = {"BASE_IMAGE": "base_image", "MEGATRON_CORE_VERSION": "megatron-core",
               "TRANSFORMERS_VERSION": "transformers", "TE_VERSION": "transformer-engine",
               "FLASH_ATTN_VERSION": "flash-attn", "FLASH_ATTN_COMMIT": "flash-attn-3 (commit)"}
ABSENT = "absent"
LOCK_FILE = "lock.json"


# ---- measuring -----------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def installed_versions() -> dict[str, str]:
    out = {}
    for key, dist in PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = ABSENT
    return out


def environment_kind(packages: dict[str, str]) -> str:
    """Which pin set applies: the image ships Transformer Engine, the CPU venv does not."""
    return "image" if packages.get("transformer-engine", ABSENT) != ABSENT else "venv"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def tokenizer_dir(tokenizer: str) -> Path | None:
    """The local directory of a tokenizer the recipe names, or None for a bare class name."""
    from pai_patch.data.tokenizer import SHIPPED, SHIPPED_NAMES

    if tokenizer in SHIPPED_NAMES:
        return SHIPPED
    if "/" in tokenizer:
        path = Path(resolve_path(tokenizer) or tokenizer)
        return path if path.is_dir() else None
    return None


def tokenizer_files(tokenizer: str) -> dict[str, Path]:
    directory = tokenizer_dir(tokenizer)
    if directory is None:
        return {}
    return {f"tokenizer/{p.name}": p for p in sorted(directory.iterdir()) if p.is_file()}


def dataset_files(kind: str, prefix: str | Path) -> dict[str, Path]:
    """The tokenized dataset files of ``prefix`` (``<prefix>.bin``, ``<prefix>_text_document.idx``, ...)."""
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        return {}
    found = sorted(p for pattern in (f"{prefix.name}.*", f"{prefix.name}_*") for p in prefix.parent.glob(pattern))
    # the tokenizer sidecar only restates what the tokenizer and .bin hashes already pin
    return {f"dataset.{kind}/{p.name[len(prefix.name):]}": p for p in found if p.is_file() and
            not p.name.endswith(SIDECAR_SUFFIX)}


def hash_files(files: dict[str, Path], previous: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{role: {path, sha256, size, mtime_ns}}``; unchanged files reuse ``previous`` hashes (big datasets)."""
    previous = previous or {}
    out = {}
    for role, path in files.items():
        st = path.stat()
        entry = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        old = previous.get(role) or {}
        same = all(old.get(k) == entry[k] for k in ("path", "size", "mtime_ns")) and "sha256" in old
        out[role] = {**entry, "sha256": old["sha256"] if same else sha256_file(path)}
    return out


def recipe_files(recipe: Any, data_dir: Path | None = None) -> dict[str, Path]:
    """Every file the recipe names, plus the tokenized datasets under ``data_dir`` if given."""
    named = {"data.pretrain_input": recipe.data.pretrain_input, "data.sft_train": recipe.data.sft_train,
             "data.sft_valid": recipe.data.sft_valid, "generate.prompts": recipe.generate.prompts}
    files = {role: Path(resolve_path(text)) for role, text in named.items() if text}
    files = {role: p for role, p in files.items() if p.is_file()}
    files.update(tokenizer_files(recipe.data.tokenizer))
    if data_dir is not None:
        for kind in ("pretrain_text_document", "sft_train", "sft_valid"):
            files.update(dataset_files(kind.removesuffix("_text_document"), data_dir / kind))
    return files


def run_lock(*, tokenizer: str, files: dict[str, Path], recipe: str | None = None, model: dict[str, str] | None = None,
             previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The lock a run records: its environment now and the hashes of what it read."""
    packages = installed_versions()
    return {"recipe": recipe, "model": model, "image": os.environ.get("PAI_PATCH_IMAGE"),
            "environment": environment_kind(packages), "packages": packages, "git_commit": git_commit(),
            "tokenizer": tokenizer, "files": hash_files(files, (previous or {}).get("files"))}


def training_run_files(cfg: Any) -> dict[str, Path]:
    """What a training job reads: its tokenizer and its (tokenized or raw) datasets."""
    d = cfg.data
    files = tokenizer_files(d.tokenizer)
    kinds = (("sft_train", d.train_path), ("sft_valid", d.valid_path)) if d.sft else (("pretrain", d.train_path),)
    for kind, path in kinds:
        if not path:
            continue
        if d.type == "raw":
            files[f"data.{kind}"] = Path(path)
        else:  # `train_path=x_text_document.bin` names the same dataset as the bare prefix
            files.update(dataset_files(kind, dataset_prefix(path)))
    return files


def read_run_lock(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (each training run writes one at start)")
    return json.loads(path.read_text())


def write_run_lock(run_dir: Path, lock: dict[str, Any]) -> Path:
    """Merge ``lock`` into ``run_dir/lock.json``: the stage's recipe fields survive the trainer's update."""
    from pai_patch.utils import write_text_atomic

    path = Path(run_dir) / LOCK_FILE
    merged = json.loads(path.read_text()) if path.is_file() else {}
    files = {**merged.get("files", {}), **lock.get("files", {})}
    merged.update({k: v for k, v in lock.items() if v is not None or k not in merged})
    merged["files"] = files
    write_text_atomic(path, json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return path


def write_training_lock(cfg: Any) -> Path:
    """Called by the trainer at start: records what this job actually runs with."""
    out = Path(cfg.output_dir)
    previous = json.loads((out / LOCK_FILE).read_text()) if (out / LOCK_FILE).is_file() else None
    lock = run_lock(tokenizer=cfg.data.tokenizer, files=training_run_files(cfg), previous=previous,
                    model={"family": cfg.model.family, "size": cfg.model.size})
    return write_run_lock(out, lock)


# ---- the recipe side ---------------------------------------------------------------------------
def dockerfile_pins(path: Path = ROOT / "docker" / "Dockerfile") -> dict[str, str]:
    """The image's versions: the first ``ARG NAME=value`` of each pinned build argument."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*ARG\s+(\w+)=(\S+)", line)
        if m and m.group(1) in DOCKER_ARGS and DOCKER_ARGS[m.group(1)] not in pins:
            pins[DOCKER_ARGS[m.group(1)]] = m.group(2).strip("\"'")
    pins["torch"] = f"from {pins.get('base_image', 'the base image')}"
    return pins


def venv_pins(path: Path = ROOT / "requirements.lock") -> dict[str, str]:
    """The CPU venv's versions from requirements.lock; what it does not pin is absent."""
    pinned = {}
    for line in path.read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            pinned[m.group(1).lower().replace("_", "-")] = m.group(2)
    return {key: pinned.get(key, ABSENT) for key in PACKAGES}


def version_matches(pinned: str, found: str) -> bool:
    """``2.10`` pins ``2.10.0+cu128`` too, as the Dockerfile's own check does; ``from ...`` pins nothing."""
    if pinned.startswith("from "):
        return True
    return found == pinned or found.startswith((pinned + ".", pinned + "+"))


def build_recipe_lock(name: str) -> dict[str, Any]:
    """The lock section for recipe ``name`` at its default size: pins plus hashes of its data.

    The tokenized datasets are produced by the recipe's own data stage in a scratch directory,
    so their hashes are exactly what ``make recipe=NAME data`` gives.
    """
    import tempfile

    from pai_patch.recipes.resolve import load_recipe, paths
    from pai_patch.recipes.stages import stage_data

    with tempfile.TemporaryDirectory(prefix="pai-lock-") as tmp:
        recipe = load_recipe(name, [f"output_dir={tmp}"])
        p = paths(recipe)
        stage_data(recipe, p)
        hashed = hash_files(recipe_files(recipe, p.data))
    files = {role: {"path": _display_path(Path(e["path"]), Path(tmp)), "sha256": e["sha256"]}
             for role, e in hashed.items()}
    return {"image": recipe.image, "image_pins": dockerfile_pins(), "venv": venv_pins(),
            "tokenizer": recipe.data.tokenizer, "files": files}


def _display_path(path: Path, scratch: Path) -> str:
    """Repository-relative for shipped files, ``<output>/...`` for what the data stage writes."""
    if path.is_relative_to(scratch):
        return "<output>/" + str(path.relative_to(scratch))
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


LOCK_HEADER = ("# Pinned environment and data hashes this recipe was validated with. Regenerate with\n"
               "# `python -m pai_patch lock update recipe={name}`; `python -m pai_patch lock check RUN_DIR`\n"
               "# compares a run with it. Keep this block last in the file.\n")


def render_lock_yaml(name: str, lock: dict[str, Any]) -> str:
    """The ``lock:`` block, one flow-style line per entry so a changed hash is a one-line diff."""
    import yaml

    def flow(value: Any) -> str:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
        return text.removesuffix("...\n").strip()  # a bare scalar ends with YAML's document-end marker

    lines = [LOCK_HEADER.format(name=name).rstrip("\n"), "lock:"]
    for key in ("image", "image_pins", "venv", "tokenizer"):
        lines.append(f"  {key}: {flow(lock[key])}")
    lines.append("  files:")
    lines += [f"    {role}: {flow(entry)}" for role, entry in lock["files"].items()]
    return "\n".join(lines) + "\n"


def replace_lock_block(text: str, name: str, block: str) -> str:
    """``text`` with its trailing lock block (header comment + ``lock:``) replaced by ``block``."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith("lock:")), len(lines))
    header = set(LOCK_HEADER.format(name=name).splitlines(keepends=True))
    while start > 0 and lines[start - 1] in header:
        start -= 1
    for line in lines[start:]:
        if line.strip() and not line.startswith((" ", "#", "lock:")):
            raise ValueError(f"the lock block must be the last block of the recipe; found {line.strip()!r} after it")
    return "".join(lines[:start]).rstrip("\n") + "\n\n" + block


# ---- comparing ---------------------------------------------------------------------------------
def diff_run(lock: dict[str, Any], run: dict[str, Any], current: dict[str, str] | None = None
             ) -> tuple[list[str], list[str]]:
    """(differences, notes) between a recipe ``lock`` and a run's ``lock.json``.

    ``current`` (installed versions now) adds the differences between the run and this
    environment, which is what decides whether a rerun here would reproduce it.
    """
    diffs: list[str] = []
    notes: list[str] = []
    if run.get("image") and run["image"] != lock.get("image"):
        diffs.append(f"image: recipe {lock.get('image')}, run {run['image']}")
    kind = run.get("environment", "venv")
    pins = lock.get("image_pins" if kind == "image" else "venv") or {}
    for pkg in PACKAGES:
        if pkg in pins and not version_matches(str(pins[pkg]), run.get("packages", {}).get(pkg, ABSENT)):
            diffs.append(f"package {pkg}: recipe pins {pins[pkg]} ({kind}), run had {run['packages'].get(pkg, ABSENT)}")
    same_tokenizer = run.get("tokenizer") == lock.get("tokenizer")
    if not same_tokenizer:
        notes.append(f"tokenizer {run.get('tokenizer')!r} is not the lock's {lock.get('tokenizer')!r}: "
                     "tokenizer and tokenized-dataset hashes not compared")
    checked = 0
    for role, want in (lock.get("files") or {}).items():
        got = (run.get("files") or {}).get(role)
        if got is None or (not same_tokenizer and role.startswith(("tokenizer/", "dataset."))):
            continue
        checked += 1
        if got["sha256"] != want["sha256"]:
            diffs.append(f"file {role} ({got['path']}): sha256 {got['sha256'][:16]}…, recipe lock "
                         f"{want['sha256'][:16]}… ({want['path']})")
    notes.append(f"{checked} of the run's {len(run.get('files') or {})} files are in the recipe lock and were compared")
    for pkg, then in (run.get("packages") or {}).items() if current is not None else ():
        if current.get(pkg, ABSENT) != then:
            diffs.append(f"environment now: {pkg} {current.get(pkg, ABSENT)}, run had {then}")
    return diffs, notes
