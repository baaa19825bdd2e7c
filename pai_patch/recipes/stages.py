"""``python -m pai_patch stage <stage> recipe=R [size=S] [key=value ...]`` — what ``make`` runs.

Stages: data → convert → pretrain → sft → export → eval → generate; ``pipeline`` runs them
in order.  ``serve`` (not part of the pipeline: it runs until stopped) serves the latest checkpoint
over websockets.  Each stage records what it was made from (a stamp of input files and settings)
next to its output and is skipped when that stamp still matches, so ``make ... pipeline``
after an edit redoes only what the edit affects.  A training stage resumes from its own
checkpoints, so a finished one whose settings changed is refused rather than "resumed" at its end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from pai_patch.checkpoint_dir import TRACKER
from pai_patch.configio import ConfigError, to_dict
from pai_patch.recipes.launch import dry_run, run_command, train_command
from pai_patch.recipes.resolve import ROOT, Paths, load_recipe, paths, resolve_path, train_config
from pai_patch.recipes.schema import Recipe
from pai_patch.utils import write_text_atomic

STAGES = ("data", "convert", "pretrain", "sft", "export", "eval", "generate")
SERVICES = ("serve",)  # run until stopped, so never part of the pipeline
CHECKS = ("rehearse",)  # what a GPU job checks before its first step, on any machine; writes nothing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=(*STAGES, "pipeline", *SERVICES, *CHECKS))
    parser.add_argument("overrides", nargs="*", help="recipe=NAME size=SIZE and section.key=value overrides")


def _recipe_name(overrides: list[str]) -> str:
    for item in overrides:
        if item.startswith("recipe="):
            return item.split("=", 1)[1]
    return "qwen2_5"


# ---- stamps ------------------------------------------------------------------------------
#: Files up to this size are hashed whole; larger ones (checkpoint shards, token bins) by their size and the
#: bytes at both ends, so a stamp check stays cheap at 70B while any re-made file still changes its stamp.
WHOLE_FILE_HASH_BYTES = 16 << 20
EDGE_BYTES = 4 << 20


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        if size <= WHOLE_FILE_HASH_BYTES:
            h.update(handle.read())
        else:
            h.update(handle.read(EDGE_BYTES))
            handle.seek(size - EDGE_BYTES)
            h.update(handle.read(EDGE_BYTES))
    return h.hexdigest()


def _fingerprint(p: Paths, files: list[Path | str | None], settings: Any) -> str:
    """What a stage's output was made from: its settings and the content of its input files.

    Paths are written relative to the output directory and the repository, and files are identified by content
    and their name inside the input, so a checkout that is copied or mounted elsewhere (PAI mounts the same
    repository at /mnt and /workspace) keeps its finished stages.
    """
    text = json.dumps(settings, sort_keys=True, default=str)
    for prefix, name in ((str(p.root), "$OUT"), (str(ROOT), "$REPO")):
        text = text.replace(prefix, name)
    h = hashlib.sha256(text.encode())
    for f in files:
        if f is None:
            continue
        path = Path(f)
        for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if item.is_file() and not item.name.endswith(".stamp"):
                name = item.relative_to(path).as_posix() if path.is_dir() else path.name
                h.update(f"{name}:{_file_digest(item)}".encode())
    return h.hexdigest()


def _stamp_path(output: Path) -> Path:
    return output.parent / f"{output.name}.stamp"


def up_to_date(output: Path, fingerprint: str) -> bool:
    stamp = _stamp_path(output)
    return output.exists() and stamp.is_file() and stamp.read_text().strip() == fingerprint


def mark_done(output: Path, fingerprint: str) -> None:
    if not dry_run():
        write_text_atomic(_stamp_path(output), fingerprint + "\n")


def _skip(stage: str, output: Path) -> None:
    print(f"[{stage}] up to date: {output}")


# ---- stages ------------------------------------------------------------------------------
def tokenizer_dir(recipe: Recipe, checkpoint: Path) -> Path | None:
    """Where the recipe's tokenizer loads from for a stage reading ``checkpoint``.

    ``data.tokenizer`` is a directory, ``shipped``, or a seed class name whose files are looked for in
    ``hf=``, then in ``checkpoint`` (``convert`` and training copy them there). A dry run, which writes
    nothing, may name a checkpoint no stage has made yet: None there, where a real run stops with the error.
    """
    from pai_patch.data.tokenizer import TokenizerNotFound, find_tokenizer

    name = recipe.data.tokenizer
    try:
        return find_tokenizer(resolve_path(name) if "/" in name else name, hf=resolve_path(recipe.convert.hf),
                              checkpoint=checkpoint, family=recipe.model.family)
    except TokenizerNotFound:
        if dry_run():
            return None
        raise


def stage_data(recipe: Recipe, p: Paths) -> None:
    from pai_patch.data.pretrain import preprocess_pretrain
    from pai_patch.data.sft import preprocess_sft
    from pai_patch.data.tokenizer import HF_SIDE_FILES, load_tokenizer

    d = recipe.data
    source = tokenizer_dir(recipe, p.mcore_base)
    settings = to_dict(d) | {"sft_seq": train_config(recipe, "sft").seq_length}
    inputs = [resolve_path(d.pretrain_input), resolve_path(d.sft_train), resolve_path(d.sft_valid),
              *(source / name for name in HF_SIDE_FILES if source)]  # its files, not a whole checkpoint's
    fp = _fingerprint(p, inputs, settings)
    if up_to_date(p.data, fp):
        return _skip("data", p.data)
    print(f"[data] {d.pretrain_input} -> {p.pretrain_dataset}; SFT {d.sft_train} -> {p.sft_train}")
    if dry_run():
        return
    tokenizer = load_tokenizer(source)
    p.data.mkdir(parents=True, exist_ok=True)
    print(preprocess_pretrain(resolve_path(d.pretrain_input), tokenizer, p.pretrain_prefix, json_key=d.json_key,
                              workers=d.workers))
    seq = train_config(recipe, "sft").seq_length
    for source, target in ((d.sft_train, p.sft_train), (d.sft_valid, p.sft_valid)):
        print(preprocess_sft(resolve_path(source), tokenizer, target, fmt=d.sft_format, seq_length=seq,
                             pack=bool(recipe.sft.data.get("pack", False))))
    mark_done(p.data, fp)


def ensure_hf_base(recipe: Recipe, p: Paths) -> Path:
    """The HF checkpoint conversion starts from: the user's, or a seeded random one (tiny runs)."""
    if recipe.convert.hf:
        hf = Path(resolve_path(recipe.convert.hf))
        if not (hf / "config.json").is_file():
            raise FileNotFoundError(f"convert.hf: {hf / 'config.json'} not found (expected an HF checkpoint dir)")
        return hf
    if recipe.model.size != "tiny":
        raise ConfigError(f"convert.hf: size {recipe.model.size} starts from its published HF checkpoint; "
                          f"pass hf=/path/to/checkpoint (e.g. make recipe={recipe.recipe} "
                          f"size={recipe.model.size} hf=/mnt/ckpts/... convert)")
    settings = {"model": to_dict(recipe.model), "seed": recipe.convert.seed, "tok": recipe.data.tokenizer}
    fp = _fingerprint(p, [], settings)
    if not up_to_date(p.hf_base, fp) and not dry_run():
        from pai_patch.recipes.hf_init import write_random_hf

        write_random_hf(recipe.model.family, recipe.model.size, p.hf_base, recipe.data.tokenizer,
                        seed=recipe.convert.seed)
        mark_done(p.hf_base, fp)
    return p.hf_base


def stage_convert(recipe: Recipe, p: Paths) -> None:
    hf = ensure_hf_base(recipe, p)
    c, par = recipe.convert, recipe.parallel
    # legacy rank files also depend on the virtual-pipeline chunks and the first stage's layers
    pipeline = {k: v for k, v in (("vp", par.vp), ("pp0-layers", par.pp0_layers)) if v is not None}
    settings = {k: v for k, v in to_dict(c).items() if k != "hf"}  # the checkpoint counts by content, not by path
    fp = _fingerprint(p, [hf], settings | {"tp": par.tp, "pp": par.pp, "ep": par.ep} | pipeline)
    if up_to_date(p.mcore_base, fp):
        return _skip("convert", p.mcore_base)
    if p.mcore_base.exists() and not dry_run():
        shutil.rmtree(p.mcore_base)
    run_command(_python("convert", "hf2mcore", "--model", recipe.model.family, "--size", recipe.model.size,
                        "--hf", str(hf), "--mcore", str(p.mcore_base), "--tp", str(par.tp), "--pp", str(par.pp),
                        "--ep", str(par.ep), "--format", c.format, "--dtype", c.dtype,
                        *(arg for key, value in pipeline.items() for arg in (f"--{key}", str(value)))))
    mark_done(p.mcore_base, fp)


def _training_stage(stage: str) -> Callable[[Recipe, Paths], None]:
    def run(recipe: Recipe, p: Paths) -> None:
        import yaml

        cfg = train_config(recipe, stage, p)
        _validate(recipe, cfg)
        if cfg.data.train_path.startswith(str(p.data)):
            stage_data(recipe, p)  # this run's own data: (re)made when missing or stale
        out = Path(cfg.output_dir)
        save_root = Path(cfg.checkpoint.save) if cfg.checkpoint.save else out / "checkpoint"
        _starting_point(recipe, stage, p, cfg, save_root)
        inputs = [p.data if cfg.data.train_path.startswith(str(p.data)) else Path(cfg.data.train_path)]
        if cfg.checkpoint.load:  # a retrained parent makes this stage stale
            inputs.append(Path(cfg.checkpoint.load) / TRACKER)
        fp = _fingerprint(p, inputs, to_dict(cfg))
        final = save_root / f"iter_{cfg.train.iterations:07d}"
        if up_to_date(out, fp) and final.exists():
            return _skip(stage, out)
        print(f"[{stage}] {_budget_line(cfg.train)}", flush=True)
        _refuse_finished_run(stage, out, save_root, cfg.train.iterations)
        job = out / "job.yaml"
        if not dry_run():
            cfg.tokenizer_dir()  # a tokenizer found nowhere: one line here, not one per rank after the launch
            # atomic: on PAI-DLC every node runs this stage on the shared output directory, and one
            # node's workers may be reading job.yaml while another node rewrites it
            write_text_atomic(job, yaml.safe_dump(to_dict(cfg), sort_keys=False))
            write_text_atomic(out / "recipe.resolved.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False))
            from pai_patch.reproduce.lock import recipe_files, run_lock, write_run_lock

            write_run_lock(out, run_lock(tokenizer=recipe.data.tokenizer, files=recipe_files(recipe, p.data),
                                         recipe=recipe.recipe, model=to_dict(recipe.model)))
        else:
            print(json.dumps(to_dict(cfg), indent=1))
        run_command(train_command(recipe, str(job)))
        if not dry_run() and not final.exists():
            # stopped early and saved (SIGTERM, exit_interval): the next stages must not start from a partial run
            print(f"[{stage}] stopped before iteration {cfg.train.iterations}; run the same command again to resume "
                  f"from {save_root}", flush=True)
            raise SystemExit(0)
        mark_done(out, fp)

    return run


def _starting_point(recipe: Recipe, stage: str, p: Paths, cfg, save_root: Path) -> None:  # noqa: ANN001
    """A training stage with nothing to load never starts from random weights without a word.

    With ``hf=`` it converts that checkpoint first (the convert stage, skipped when its stamp is
    current) and loads the result; training from scratch is the ``from_scratch=true`` switch, or the
    tiny CPU size with no ``hf=`` (the shipped recipes' default), and says so in one line.
    """
    from pai_patch.checkpoint_dir import has_checkpoint, latest_iteration

    load = Path(cfg.checkpoint.load or ".")
    if getattr(recipe, stage).checkpoint.get("load") and not has_checkpoint(load):
        # the user's (a seed's PRETRAIN_CHECKPOINT_PATH): refused here, before a job is queued
        problem = f"not a Megatron checkpoint (no {TRACKER})" if load.is_dir() else "no such checkpoint directory"
        raise ConfigError(f"{stage}.checkpoint.load: {load}: {problem}")
    if cfg.checkpoint.load or latest_iteration(save_root) is not None:
        return  # an explicit or earlier stage's checkpoint, or this stage's own to resume
    if recipe.convert.hf and not recipe.from_scratch:
        print(f"[{stage}] nothing to load yet: converting {recipe.convert.hf} first", flush=True)
        stage_convert(recipe, p)
        cfg.checkpoint.load = str(p.mcore_base)
        return
    if not recipe.from_scratch and recipe.model.size != "tiny":
        raise ConfigError(f"{stage}: size {recipe.model.size} has no checkpoint to start from; pass hf=DIR (its HF "
                          f"checkpoint, converted first) or from_scratch=true to train from random initialisation")
    reason = "from_scratch=true" if recipe.from_scratch else "tiny size with no hf="
    print(f"[{stage}] training from scratch: random initialisation ({reason})", flush=True)


def _budget_line(train) -> str:  # noqa: ANN001
    """How many iterations the job runs and why, so a dry run shows a token budget's real length."""
    batch = f"global batch {train.global_batch_size} x seq {train.seq_length}"
    if train.train_iters is not None:
        return f"{train.iterations} iterations ({batch})"
    return f"{train.iterations} iterations: {train.train_tokens} tokens / ({batch} = {train.tokens_per_iter} tokens)"


def _refuse_finished_run(stage: str, out: Path, save_root: Path, iterations: int) -> None:
    """A stale stage whose checkpoints already reach the end would be resumed there and train nothing.

    The trainer resumes from its own save directory (so a stopped run continues, and a larger
    train_iters trains on); after other edits that would silently keep the old model.
    """
    from pai_patch.checkpoint_dir import latest_iteration

    done = latest_iteration(save_root)
    if _stamp_path(out).is_file() and done is not None and done >= iterations:
        raise ConfigError(f"{save_root}: already at iteration {done} of {iterations}, trained with other settings or "
                          f"inputs, so the {stage} stage would resume there and train nothing; remove it (or pass "
                          f"output=DIR) to train again")


def _validate(recipe: Recipe, cfg) -> None:  # noqa: ANN001
    """Reject an impossible layout before any process starts."""
    from pai_patch.models import get_family
    from pai_patch.parallel import validate_layout
    from pai_patch.recipes.launch import nodes_and_procs

    family = get_family(cfg.model.family)
    size = family.size(cfg.model.size)
    nodes, per_node = nodes_and_procs(recipe)
    validate_layout(size, cfg.runtime(), nodes * per_node, global_batch=cfg.train.global_batch_size,
                    micro_batch=cfg.train.micro_batch_size, num_experts=family.num_routed_experts(size),
                    seq_length=cfg.seq_length)


def _latest_training_checkpoint(p: Paths) -> Path:
    for candidate in (p.sft / "checkpoint", p.pretrain / "checkpoint"):
        if p.has_checkpoint(candidate):
            return candidate
    raise FileNotFoundError(f"no training checkpoint under {p.sft} or {p.pretrain}; run the pretrain or sft stage")


def stage_export(recipe: Recipe, p: Paths) -> None:
    ckpt = _latest_training_checkpoint(p)
    # without hf= at a real size, the config and tokenizer come from the copies the checkpoint carries
    hf = ensure_hf_base(recipe, p) if recipe.convert.hf or recipe.model.size == "tiny" else None
    fp = _fingerprint(p, [ckpt / TRACKER, hf], to_dict(recipe.export))
    if up_to_date(p.hf_export, fp):
        return _skip("export", p.hf_export)
    if p.hf_export.exists() and not dry_run():
        shutil.rmtree(p.hf_export)
    run_command(_python("convert", "mcore2hf", "--model", recipe.model.family, "--size", recipe.model.size,
                        "--mcore", str(ckpt), "--hf", str(p.hf_export), *(["--source-hf", str(hf)] if hf else []),
                        "--dtype", recipe.export.dtype, *([] if recipe.export.verify else ["--no-verify"])))
    mark_done(p.hf_export, fp)


def stage_eval(recipe: Recipe, p: Paths) -> None:
    if not (p.hf_export / "config.json").exists():
        stage_export(recipe, p)
    e = recipe.eval
    fp = _fingerprint(p, [p.hf_export], to_dict(e))
    if up_to_date(p.eval, fp):
        return _skip("eval", p.eval)
    print(f"[eval] lm-eval {','.join(e.tasks)} on {p.hf_export}")
    if dry_run():
        return
    from pai_patch.evaluation.runner import evaluate
    from pai_patch.reproduce.report import write_report

    p.eval.mkdir(parents=True, exist_ok=True)
    scores = evaluate(p.hf_export, e.tasks, data_dir=resolve_path(e.data_dir), limit=e.limit,
                      batch_size=e.batch_size, output=p.eval / "results.json",
                      apply_chat_template=e.apply_chat_template, num_fewshot=e.num_fewshot)
    for key, value in scores.items():
        print(f"[eval] {key}: {value:.4f}")
    write_report(recipe, scores, p.eval)
    mark_done(p.eval, fp)


def stage_generate(recipe: Recipe, p: Paths) -> None:
    ckpt = _latest_training_checkpoint(p)
    g = recipe.generate
    out = p.generate / "output.jsonl"
    fp = _fingerprint(p, [ckpt / TRACKER, resolve_path(g.prompts)], to_dict(g))
    if up_to_date(p.generate, fp):
        return _skip("generate", p.generate)
    if not dry_run():
        p.generate.mkdir(parents=True, exist_ok=True)
    run_command(_python("generate", *_model_and_sampling_args(recipe, ckpt), "--tp", str(recipe.parallel.tp),
                        "--input", resolve_path(g.prompts), "--output", str(out)))
    mark_done(p.generate, fp)


def stage_serve(recipe: Recipe, p: Paths) -> None:
    """Serve the latest SFT (else pretrain) checkpoint until SIGTERM/SIGINT.

    The server replaces this process (exec) so that Ctrl-C and SIGTERM reach it directly and it
    closes its connections cleanly; host, port and token come from ``PAI_SERVE_HOST/PORT/TOKEN``.
    """
    cmd = _python("serve", *_model_and_sampling_args(recipe, _latest_training_checkpoint(p)))
    print("+ " + shlex.join(cmd), flush=True)
    if not dry_run():
        os.execv(sys.executable, cmd)


def _model_and_sampling_args(recipe: Recipe, ckpt: Path) -> list[str]:
    g = recipe.generate
    tokenizer = tokenizer_dir(recipe, ckpt)
    return ["--mcore", str(ckpt), "--family", recipe.model.family, "--size", recipe.model.size,
            "--max-new-tokens", str(g.max_new_tokens), "--top-k", str(g.top_k), "--top-p", str(g.top_p),
            "--temperature", str(g.temperature), "--repetition-penalty", str(g.repetition_penalty),
            *(["--chat"] if g.chat else []), *([] if g.verify else ["--no-verify"]),
            *(["--tokenizer", str(tokenizer)] if tokenizer else [])]


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "pai_patch", *args]


RUNNERS: dict[str, Callable[[Recipe, Paths], None]] = {
    "data": stage_data,
    "convert": stage_convert,
    "pretrain": _training_stage("pretrain"),
    "sft": _training_stage("sft"),
    "export": stage_export,
    "eval": stage_eval,
    "generate": stage_generate,
    "serve": stage_serve,
}


def run_stage(stage: str, overrides: list[str]) -> None:
    recipe = load_recipe(_recipe_name(overrides), overrides, stage)
    p = paths(recipe, planned=stage == "pipeline" and dry_run())
    if stage in CHECKS or os.environ.get("DRY_RUN") == "rehearse":  # `DRY_RUN=rehearse` on a stage or seed launcher
        from pai_patch.recipes import rehearse

        return rehearse.run(recipe, p, overrides, stage)
    if stage == "pipeline":  # a bad training setting stops the pipeline before data and convert, not after them
        for name in ("pretrain", "sft"):
            train_config(recipe, name, p)
    for name in STAGES if stage == "pipeline" else (stage,):
        print(f"== {recipe.recipe} {recipe.model.size}: {name} ({p.root})", flush=True)
        RUNNERS[name](recipe, p)


def run(args: argparse.Namespace) -> int:
    if os.environ.get("DRY_RUN") is None and any(o.startswith("DRY_RUN=") for o in args.overrides):
        os.environ["DRY_RUN"] = next(o for o in args.overrides if o.startswith("DRY_RUN=")).split("=", 1)[1]
    run_stage(args.stage, args.overrides)
    return 0
