"""``python -m pai_patch <command>``: one entry point, one module per command.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this
table is the only place that lists them, so commands load lazily (``--help`` and
``models info`` do not import megatron-core's training stack).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import shutil
import sys
import warnings
from pathlib import Path

COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("pai_patch.models.cli", "inspect model families and sizes"),
    "train": ("pai_patch.training.cli", "pretrain or fine-tune with megatron-core"),
    "stage": ("pai_patch.recipes.stages", "run one stage of a recipe (what `make` calls)"),
    "recipe": ("pai_patch.recipes.cli", "show / resolve / validate a recipe"),
    "seed": ("pai_patch.recipes.seed_args", "run a seed launcher's positional interface over its recipe"),
    "preprocess": ("pai_patch.data.cli", "JSON corpora and SFT data to Megatron idxmap"),
    "data": ("pai_patch.data.inspect_cli", "inspect or validate an idxmap dataset"),
    "convert": ("pai_patch.convert.cli", "HF <-> Megatron-Core checkpoint conversion"),
    "generate": ("pai_patch.generation.cli", "text generation from a Megatron-Core checkpoint"),
    "serve": ("pai_patch.generation.server", "streaming websocket generation service (the seed's client)"),
    "eval": ("pai_patch.evaluation.cli", "lm-eval on a checkpoint"),
    "hf_train": ("pai_patch.hf_train.cli", "HF + DeepSpeed ZeRO training"),
    "doctor": ("pai_patch.doctor", "what this environment has and what each switch will use"),
    "lock": ("pai_patch.reproduce.lock_cli", "compare a run with its recipe lock"),
}


#: (category, message regex, module regex) of the library warnings every run printed that a user cannot act on;
#: each is filtered only for that message from that module, so any other warning still shows.
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # megatron warns on every selective core_attn recompute (the seeds' AC=sel) in case TE's fused attention
    # makes it pointless; without TE (CPU) it is the unfused attention, where recomputing is what AC=sel asks for
    (UserWarning, r"If you are using transformer_engine as the transformer implementation, the core_attn",
     r"megatron\.core\.transformer\.transformer_config"),
    # megatron-core 0.16's torch_dist loader calls torch's old name; the checkpoint loads the same
    (FutureWarning, r"`load_state_dict` is deprecated", r"megatron\.core\.dist_checkpointing"),
    # megatron-core's torch_dist format is built on ShardedTensor; nothing a user chooses avoids it (attributed to
    # pai_patch.patches.cpu on the CPU, whose torch-function mode is the caller torch sees)
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor",
     r"(pai_patch\.patches\.cpu|torch\.distributed|megatron\.core)"),
    # the distributed optimizer's zero_grad asks every shard view for .grad (megatron marks it
    # "throws grad-access warning"); the views never get gradients, so there is nothing to lose
    (UserWarning, r"The \.grad attribute of a Tensor that is not a leaf Tensor",
     r"(pai_patch\.patches\.cpu|megatron\.core\.optimizer)"),
    # megatron-core's distributed optimizer and sequence parallelism call torch's old collective names; same collectives
    (FutureWarning, r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated",
     r"torch\.distributed"),
    # conversion writes each tensor group single-process on purpose (no_dist=True); torch warns even when asked
    (UserWarning, r"torch\.distributed is disabled, unavailable or uninitialized",
     r"torch\.distributed\.checkpoint"),
)


def quiet_known_warnings() -> None:
    """Filter :data:`KNOWN_WARNINGS`, unless the user asked for warnings explicitly (``-W``/``PYTHONWARNINGS``)."""
    if sys.warnoptions:
        return
    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


#: what an errno means for the path it names, where ``os.strerror`` alone does not say what to do
ERRNO_MEANINGS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (over the file system's or `ulimit -f`'s limit)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory, expected a file",
}


def describe_os_error(err: OSError) -> str:
    """One line for an ``OSError``: the path, what its errno means there, and what would help.

    Raised by ``open``/``mkdir``/``write`` anywhere below a command, the exception names the
    path but its text (``[Errno 28] No space left on device: 'x'``) says neither which part of a
    path is wrong nor how much room there is; this is the one place that does, for every command.
    """
    from pai_patch.utils import existing_ancestor, mib

    if err.errno is None:  # raised with a message of ours (FileNotFoundError("<path>: ..."))
        return str(err)
    name = errno.errorcode.get(err.errno, str(err.errno))
    ours = err.strerror and err.strerror != os.strerror(err.errno)  # e.g. require_space's "needs N MiB"
    meaning = err.strerror if ours else ERRNO_MEANINGS.get(err.errno, (err.strerror or type(err).__name__).lower())
    path = Path(os.fsdecode(err.filename)) if err.filename is not None else None
    text = f"{path}: {meaning} ({name})" if path else f"{meaning} ({name})"
    if ours or path is None:
        return text
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (path, *path.parents) if p.is_file()), None)
        if blocker is not None and blocker != path:
            text += f"; {blocker} is a regular file, so nothing can be created under it"
        elif blocker == path and err.errno == errno.EEXIST:
            text += "; it is a regular file where a directory is needed"
    elif err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            text += f"; {mib(shutil.disk_usage(existing_ancestor(path)).free)} free on its file system"
        except OSError:
            pass
    elif err.errno in (errno.EACCES, errno.EPERM):
        text += f"; check the owner and mode of {existing_ancestor(path)}"
    return text


#: what a command raises for bad input or a bad environment: printed as one line, exit status 2
ONE_LINE_ERRORS = (CliError, KeyError, ValueError, OSError, ChildProcessError)


def _checkpoint_failure(err: BaseException) -> BaseException:
    """The first rank's failure inside torch's ``CheckpointException`` (a ``BaseException`` wrapping, say, the
    ``FileNotFoundError`` of a missing ``.distcp``); any other exception as it is. Matched by shape, so that
    this entry point does not import torch."""
    failures = getattr(err, "failures", None) if type(err).__name__ == "CheckpointException" else None
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        cause = first[0] if isinstance(first, tuple) else first
        if isinstance(cause, BaseException):
            return cause
    return err


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_known_warnings()
    parser = argparse.ArgumentParser(prog="python -m pai_patch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as err:
        if err.name == COMMANDS[name][0]:
            print(f"error: command {name!r} is not available in this build", file=sys.stderr)
            return 2
        raise
    cmd_parser = argparse.ArgumentParser(prog=f"python -m pai_patch {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except BaseException as raised:  # noqa: BLE001 - narrowed at once; the others go on as raised
        err = _checkpoint_failure(raised)
        if not isinstance(err, ONE_LINE_ERRORS) or os.environ.get("PAI_PATCH_TRACEBACK", "0") not in ("", "0"):
            raise  # the whole traceback, for an error whose one line is not enough
        if isinstance(err, OSError):
            message = describe_os_error(err)
        else:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
