"""Bad input across the CLIs: every case exits non-zero with one ``error:`` line, and that line is
exactly the one listed here and in docs/errors.md (generated from these tables, so the doc
cannot drift: ``python tests/test_badinput_cli.py > docs/errors.md``).

``CASES`` run in process (fast).  ``RUNTIME_CASES`` need a training process (data, tokenizer,
checkpoint checks happen at run time) and run in the fault suite
(tests/faults/test_badinput_runtime.py).  ``<tmp>`` stands for a scratch directory and
``<repo>`` for the repository root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "errors.md"
QWEN_ARGS = ("dsw 0.5B 1 8 1e-5 1e-6 128 128 bf16 1 1 1 true true true false sel false 100 /d /v none "
             "10000 100 /out").split()


def _seed(**changes: str) -> list[str]:
    names = ("ENV MODEL_SIZE BATCH_SIZE GLOBAL_BATCH_SIZE LR MIN_LR SEQ_LEN PAD_LEN PR TP PP CP SP DO FL SFT AC "
             "OPTIMIZER_OFFLOAD SAVE_INTERVAL DATASET_PATH VALID_DATASET_PATH PRETRAIN_CHECKPOINT_PATH "
             "TRAIN_TOKENS_OR_ITERS WARMUP_TOKENS_OR_ITERS OUTPUT_BASEPATH").split()
    args = dict(zip(names, QWEN_ARGS))
    args.update(changes)
    return ["seed", "run_mcore_qwen", *args.values()]


QWEN_USAGE = ("usage: run_mcore_qwen.sh ENV MODEL_SIZE BATCH_SIZE GLOBAL_BATCH_SIZE LR MIN_LR SEQ_LEN PAD_LEN PR TP PP "
              "CP SP DO FL SFT AC OPTIMIZER_OFFLOAD SAVE_INTERVAL DATASET_PATH VALID_DATASET_PATH "
              "PRETRAIN_CHECKPOINT_PATH TRAIN_TOKENS_OR_ITERS WARMUP_TOKENS_OR_ITERS OUTPUT_BASEPATH")
TRAIN_KEYS = ("eval_interval, eval_iters, exit_duration_minutes, exit_interval, flash_attn, global_batch_size, "
              "log_interval, micro_batch_size, nan_skip_budget, precision, recompute, recompute_layers, seed, "
              "seq_length, train_iters, train_tokens, warmup_iters, warmup_tokens")
RECIPE_KEYS = ("convert, data, description, eval, export, from_scratch, generate, image, launch, lock, model, output_dir, "
               "parallel, pretrain, recipe, sft, sizes")
QWEN_YAML = "<repo>/recipes/qwen2_5/recipe.yaml"

#: (what is wrong, argv, the one line users see); recipe stages run with DRY_RUN=1
CASES: list[tuple[str, list[str], str]] = [
    ("recipe: unknown key in a stage's train section",
     ["stage", "pretrain", "recipe=qwen2_5", "pretrain.train.lr=abc"],
     f"error: unknown key train.lr; valid keys here: {TRAIN_KEYS}"),
    ("recipe: wrong type (number)", ["stage", "pretrain", "recipe=qwen2_5", "pretrain.optim.lr=abc"],
     "error: optim.lr: expected a number, got 'abc'"),
    ("recipe: wrong type (integer)", ["stage", "pretrain", "recipe=qwen2_5", "pretrain.train.train_iters=ten"],
     "error: train.train_iters: expected an integer, got 'ten'"),
    ("recipe: wrong type (alias)", ["stage", "pretrain", "recipe=qwen2_5", "tp=two"],
     f"error: {QWEN_YAML}: parallel.tp: expected an integer, got 'two'"),
    ("recipe: unknown top-level key", ["stage", "pretrain", "recipe=qwen2_5", "bogus.key=1"],
     f"error: {QWEN_YAML}: unknown key bogus; valid keys here: {RECIPE_KEYS}"),
    ("recipe: value outside its choices", ["stage", "pretrain", "recipe=qwen2_5", "launch.env=k8s"],
     f"error: {QWEN_YAML}: launch.env: 'k8s' is not one of 'dsw', 'dlc'"),
    ("recipe: out-of-range value", ["stage", "pretrain", "recipe=qwen2_5", "pretrain.train.seq_length=0"],
     "error: train.seq_length must be >= 1"),
    ("recipe: impossible parallel layout", ["stage", "pretrain", "recipe=qwen2_5", "tp=3"],
     "error: invalid parallel layout: TP=3 must divide the attention heads (4)"),
    ("recipe: learning rate below the recipe's min_lr (a fine-tuning override)",
     ["stage", "sft", "recipe=qwen2_5", "lr=1e-6"],
     "error: optim.lr (1e-06) is below optim.min_lr (0.0002); the schedule decays lr down to min_lr, so set "
     "optim.min_lr at most lr"),
    ("recipe: a bad sft setting stops the pipeline before its first stage",
     ["stage", "pipeline", "recipe=qwen2_5", "sft.optim.beta2=1"],
     "error: optim.beta2: expected 0 <= beta2 < 1, got 1"),
    ("recipe: the lr= shorthand where no single training stage is run", ["stage", "pipeline", "recipe=qwen2_5", "lr=1e-6"],
     "error: lr= sets the training stage being run (`make ... pretrain lr=1e-6` or `sft lr=1e-6`); for pipeline "
     "name the stage: sft.optim.lr=1e-06"),
    ("recipe: override without a value", ["stage", "pretrain", "recipe=qwen2_5", "pretrain.train"],
     "error: override 'pretrain.train' must look like key=value"),
    ("recipe: unknown recipe", ["stage", "pretrain", "recipe=nosuch"],
     "error: unknown recipe 'nosuch'; valid recipes: deepseek_v2, llama2, qwen2_5, qwen3"),
    ("recipe: unknown model size", ["stage", "pretrain", "recipe=qwen2_5", "size=huge"],
     "error: unknown size 'huge' for qwen2_5; valid sizes: tiny, 0.5B, 1.5B, 3B, 7B, 14B, 32B, 72B"),
    ("recipe: recipe file path that does not exist", ["stage", "pretrain", "recipe=<tmp>/missing.yaml"],
     "error: <tmp>/missing.yaml: no such recipe file"),
    ("recipe: a seed tokenizer name of another model family", ["stage", "pretrain", "recipe=llama2",
                                                                 "data.tokenizer=Qwen2Tokenizer"],
     "error: tokenizer 'Qwen2Tokenizer' is the qwen2_5 tokenizer, but the model is llama2; name this model's "
     "(LLamaTokenizer, LlamaTokenizer)"),
    ("recipe: HF checkpoint path that does not exist", ["stage", "convert", "recipe=qwen2_5", "hf=<tmp>/nohf"],
     "error: convert.hf: <tmp>/nohf/config.json not found (expected an HF checkpoint dir)"),
    ("recipe: other settings for a training stage that already finished (`<tmp>/out` holds a 100-iteration run)",
     ["stage", "pretrain", "recipe=qwen2_5", "output=<tmp>/out", "pretrain.optim.lr=1e-3"],
     "error: <tmp>/out/pretrain/checkpoint: already at iteration 100 of 100, trained with other settings or inputs, "
     "so the pretrain stage would resume there and train nothing; remove it (or pass output=DIR) to train again"),
    ("convert: HF checkpoint directory that does not exist",
     ["convert", "hf2mcore", "--model", "qwen2_5", "--size", "tiny", "--hf", "<tmp>/nohf", "--mcore", "<tmp>/mcore"],
     "error: <tmp>/nohf: no such directory (expected an HF checkpoint with *.safetensors)"),
    ("preprocess: output prefix under a regular file",
     ["preprocess", "pretrain", "--input", "<tmp>/scraped.jsonl", "--tokenizer", "shipped", "--output-prefix",
      "<tmp>/bad.yaml/o"],
     "error: <tmp>/bad.yaml/o_text_document.tokenizer.json: not a directory (ENOTDIR); <tmp>/bad.yaml is a regular "
     "file, so nothing can be created under it"),
    ("preprocess: text no tokenizer encodes (a lone surrogate)",
     ["preprocess", "pretrain", "--input", "<tmp>/scraped.jsonl", "--tokenizer", "shipped", "--output-prefix",
      "<tmp>/o", "--no-progress"],
     "error: <tmp>/scraped.jsonl:2: invalid text: 'text' holds a lone surrogate '\\ud800' at character 8, expected "
     "valid Unicode (text a tokenizer can encode)"),
    ("preprocess: --skip-bad-lines skipping more than --max-bad-fraction of the records",
     ["preprocess", "pretrain", "--input", "<tmp>/scraped.jsonl", "--tokenizer", "shipped", "--output-prefix",
      "<tmp>/o", "--no-progress", "--skip-bad-lines"],
     "error: --skip-bad-lines skipped 1 of 2 records (50.0%: 1 invalid text), more than --max-bad-fraction 0.01 "
     "allows; nothing was written (fix the input, or raise --max-bad-fraction)"),
    ("convert: config.json that is not JSON", ["convert", "hf2mcore", "--hf", "<tmp>/notjson", "--mcore", "<tmp>/m"],
     "error: <tmp>/notjson/config.json:2: not valid JSON (Expecting property name enclosed in double quotes); "
     "expected an HF config.json"),
    ("convert: config.json without a key the model's shape needs",
     ["convert", "hf2mcore", "--hf", "<tmp>/nokey", "--mcore", "<tmp>/m"],
     "error: <tmp>/nokey/config.json: no 'num_attention_heads' key, which the shape of a qwen2_5 model needs"),
    ("convert: config.json with an impossible shape",
     ["convert", "hf2mcore", "--hf", "<tmp>/badshape", "--mcore", "<tmp>/m"],
     "error: <tmp>/badshape/config.json: num_attention_heads (4) is not a multiple of num_key_value_heads (3)"),
    ("train: job file that does not exist", ["train", "--config", "<tmp>/job.yaml"],
     "error: <tmp>/job.yaml: no such file"),
    ("train: job file with invalid YAML", ["train", "--config", "<tmp>/bad.yaml"],
     "error: <tmp>/bad.yaml:2: invalid YAML (expected ',' or ']', but got '<stream end>')"),
    ("train: value outside its choices", ["train", "train.precision=fp64"],
     "error: train.precision: 'fp64' is not one of fp32, fp16, bf16, fp8"),
    ("train: negative weight decay", ["train", "optim.weight_decay=-0.1"],
     "error: optim.weight_decay: expected a finite number >= 0, got -0.1"),
    ("train: conflicting budget", ["train", "train.train_iters=5", "train.train_tokens=100"],
     "error: train: give exactly one of train_iters or train_tokens"),
    ("train: unknown model family", ["train", "model.family=gpt5"],
     "error: unknown model family 'gpt5'; valid: deepseek_v2, llama2, qwen2_5, qwen3"),
    ("seed script: wrong argument count", ["seed", "run_mcore_qwen", "dsw", "0.5B"],
     f"error: run_mcore_qwen.sh takes 25 arguments, got 2; {QWEN_USAGE}"),
    ("seed script: value outside its choices", _seed(PR="fp64"),
     "error: run_mcore_qwen.sh argument 9 (PR) = 'fp64'; allowed: fp16, bf16, fp8"),
    ("seed script: not an integer", _seed(BATCH_SIZE="one"),
     "error: run_mcore_qwen.sh argument 3 (BATCH_SIZE) = 'one'; expected an integer"),
    ("seed script: not a number", _seed(LR="abc"),
     "error: run_mcore_qwen.sh argument 5 (LR) = 'abc'; expected a number"),
    ("seed script: boolean other than true/false", _seed(SP="yes"),
     "error: run_mcore_qwen.sh argument 13 (SP) = 'yes'; allowed: true, false"),
    ("seed script: unknown model size", _seed(MODEL_SIZE="99B"),
     "error: unknown size '99B' for qwen2_5; valid sizes: tiny, 0.5B, 1.5B, 3B, 7B, 14B, 32B, 72B"),
]

#: checked by tests/faults/test_badinput_runtime.py (a training process each)
RUNTIME_CASES: list[tuple[str, str, str]] = [
    ("train: dataset prefix that does not exist", "data.train_path=<tmp>/nodata_text_document",
     "error: data.train_path: <tmp>/nodata_text_document.bin not found (expected a Megatron .bin/.idx prefix)"),
    ("train: a seed tokenizer name (no TOKENIZER_DIR, hf= or checkpoint.load holding its files)",
     "data.tokenizer=Qwen2Tokenizer checkpoint.load=<tmp>/empty",
     "error: tokenizer 'Qwen2Tokenizer': no tokenizer files (tokenizer.json, tokenizer.model, vocab.json) found in "
     "the tokenizer directory (data.tokenizer=DIR / TOKENIZER_DIR): not given; the HF checkpoint (hf=): not given; "
     "the checkpoint being loaded: <tmp>/empty"),
    ("train: tokenizer directory that does not exist", "data.tokenizer=<tmp>/notok",
     "error: tokenizer directory <tmp>/notok does not exist"),
    ("train: tokenizer directory without tokenizer files", "data.tokenizer=<tmp>/empty",
     "error: tokenizer directory <tmp>/empty does not load: it has none of tokenizer.json, tokenizer.model, "
     "vocab.json"),
    ("train: resuming a llama2 checkpoint into qwen2_5", "checkpoint.load=<tmp>/llama/checkpoint "
     "checkpoint.finetune=false",
     "error: <tmp>/llama/checkpoint/iter_0000001: tensor 'decoder.layers.self_attention.linear_qkv.weight' has "
     "shape (4, 384, 128), this model expects (4, 256, 128); the checkpoint was saved for another model or size"),
    ("train: fine-tuning from a llama2 checkpoint into qwen2_5", "checkpoint.load=<tmp>/llama/checkpoint",
     "error: <tmp>/llama/checkpoint/iter_0000001: missing tensor decoder.layers.self_attention.linear_qkv.bias "
     "(and 3 more)"),
]

#: documented here, checked by the fault suite (tests/faults/test_disk_data_nan.py, test_save_rank_failure.py,
#: test_badinput_runtime.py, test_kill_resume.py), tests/test_reliability_vocab.py, tests/test_reliability_checkpoint.py
#: and tests/test_checkpoint_readers.py
FAULT_ROWS: list[tuple[str, str]] = [
    ("train: corrupt `.idx` (cut short)", "error: data.train_path: `<prefix>.idx`: N bytes, but the header's S "
     "sequences and D document indices need M"),
    ("train: `.idx` that is not an idxmap", "error: data.train_path: `<prefix>.idx`: wrong magic ..., expected "
     "b'MMIDIDX\\x00\\x00' (not a Megatron idxmap index)"),
    ("train: truncated `.bin`", "error: data.train_path: `<prefix>.bin` has N bytes but `<prefix>.idx` points to M; "
     "the .bin is truncated or belongs to another index"),
    ("train: dataset shorter than one sample", "error: data.train_path: `<prefix>.bin` holds N tokens in D "
     "documents, fewer than one training sample needs (seq_length + 1 = S)"),
    ("train: disk full / quota / `ulimit -f` during a save (under torchrun: on one rank only, every rank "
     "prints it)", "error: saving `<save>/iter_N` failed [on rank R] (file size limit reached: ...): <cause>; "
     "`<save>/iter_P` is kept as latest"),
    ("train: latest checkpoint damaged (file missing / truncated / flipped bits)", "error: `<file>`: CRC-32 X, "
     "expected Y; the file is corrupt (resuming from `<save>/latest_checkpointed_iteration.txt` = N); other "
     "checkpoints here: iter_P (write one's iteration into ... to resume from it)"),
    ("train: resuming with the distributed optimizer switched on or off relative to the saved run",
     "error: `<save>/iter_N`: its optimizer state was saved without the distributed optimizer, which this run uses; "
     "resume with parallel.distributed_optimizer=false (recipes: do=false), or start from its weights only "
     "(checkpoint.load=<that run's checkpoint dir>, checkpoint.finetune=true)"),
    ("train: a second run on the output directory of a live run (under torchrun/DLC: per job)", "error: `<save>`: "
     "in use by another training run (PID P on H, holding `<save>/.run.lock`); wait for it to finish or stop it, "
     "or use another output directory"),
    ("convert mcore2hf / generate / serve / fine-tune from `checkpoint.load`: a checkpoint file damaged (flipped "
     "bits, truncated, missing)", "error: `<file>`: CRC-32 X, expected Y; the file is corrupt; iteration N of "
     "`<ckpt>` not read (--no-verify reads it anyway)"),
    ("the same readers: a trainer's save without its completeness marker (half-written)", "error: `<save>/iter_N`: "
     "no COMPLETE.json; the checkpoint was not completely written; iteration N of `<save>` not read (--no-verify "
     "reads it anyway)"),
    ("train: loss NaN/Inf", "error: non-finite loss at iteration N on rank(s) R (skip budget B used up)"),
    ("train: tokenizer with more ids than the model's embedding", "error: data.tokenizer: `<tokenizer>` (N ids, "
     "fingerprint F) has more ids than model `<family>` `<size>` has embedding rows (R: vocab_size V padded to a "
     "multiple of 128); use the tokenizer of this model"),
    ("train: data tokenized with another tokenizer (its `.tokenizer.json` sidecar says which)", "error: "
     "data.train_path: `<prefix>` was tokenized with `<tokenizer>` (N ids, fingerprint F) "
     "(`<prefix>.tokenizer.json`), but data.tokenizer is `<tokenizer>` (M ids, fingerprint G); train with the "
     "tokenizer the data was made with, or preprocess the data again with this one"),
    ("train: data without a sidecar (Megatron-LM's tools) holding ids the tokenizer lacks", "error: "
     "data.train_path: `<prefix>.bin` holds token id I, but data.tokenizer `<tokenizer>` (N ids, fingerprint F) "
     "has ids 0..N-1 only; the data was tokenized with another tokenizer"),
]


def substitute(text: str, tmp: Path) -> str:
    return text.replace("<tmp>", str(tmp)).replace("<repo>", str(REPO))


def normalize(text: str, tmp: Path) -> str:
    return text.replace(str(tmp), "<tmp>").replace(str(REPO), "<repo>")


def render_doc() -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "# Errors users see for bad input",
        "",
        "Every case below exits with status 2 and prints exactly one line on stderr (no traceback).",
        "Generated from `tests/test_badinput_cli.py` (`python tests/test_badinput_cli.py > docs/errors.md`);",
        "`tests/test_badinput_cli.py` and the fault suite (`make test-faults`) check that each command prints",
        "exactly this line, and that this file matches the tables. `<tmp>` is the directory of the example,",
        "`<repo>` the repository root. Recipe stages were run with `DRY_RUN=1`. Set `PAI_PATCH_TRACEBACK=1` to get",
        "the whole traceback instead of the line (for an error that comes from deep inside a library).",
        "",
        "A file system error in any command (full disk, quota, `ulimit -f`, read-only file system, missing",
        "permission, an output path under a regular file) prints `error: <path>: <what the errno means> (<ERRNO>)`",
        "and a hint: the free space, the regular file in the way, the directory to check; `convert hf2mcore`",
        "checks the free space first and says how much it needs.",
        "",
        "| bad input | command | message |",
        "|---|---|---|",
    ]
    for what, argv, message in CASES:
        lines.append(f"| {cell(what)} | `pai-patch {cell(' '.join(argv))}` | `{cell(message)}` |")
    base = "pai-patch train model.family=qwen2_5 model.size=tiny ..."
    for what, extra, message in RUNTIME_CASES:
        lines.append(f"| {cell(what)} | `{base} {cell(extra)}` | `{cell(message)}` |")
    lines += ["", "Faults found while running (exact wording with the real paths and numbers is in the fault "
              "suite):", "", "| fault | message |", "|---|---|"]
    for what, message in FAULT_ROWS:
        lines.append(f"| {cell(what)} | {cell(message)} |")
    return "\n".join(lines) + "\n"


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    configs = {"notjson": '{"architectures": ["Qwen2ForCausalLM"],\n "hidden_size": 64,,\n}',
               "nokey": '{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64}',
               "badshape": '{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2, '
                           '"num_attention_heads": 4, "num_key_value_heads": 3, "intermediate_size": 128, '
                           '"vocab_size": 1000}'}
    for name, text in configs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(text)
    (tmp_path / "scraped.jsonl").write_text('{"text": "fine"}\n{"text": "scraped \\ud800"}\n')
    finished = tmp_path / "out" / "pretrain" / "checkpoint"  # what a finished 100-iteration pretrain stage leaves
    finished.mkdir(parents=True)
    (finished / "latest_checkpointed_iteration.txt").write_text("100\n")
    (tmp_path / "out" / "pretrain.stamp").write_text("fingerprint of the earlier settings\n")
    return tmp_path


@pytest.mark.parametrize("what,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line(what, argv, message, inputs, capsys, monkeypatch):
    from pai_patch.cli import main

    monkeypatch.setenv("DRY_RUN", "1")
    rc = main([substitute(a, inputs) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2
    assert len(lines) == 1, err
    assert normalize(lines[0], inputs) == message


def test_seed_shell_script_wrong_count():
    """The positional shell launcher itself: one line, non-zero exit, no traceback."""
    env = dict(os.environ, DRY_RUN="1")
    result = subprocess.run(["sh", str(REPO / "recipes/qwen2_5/run_mcore_qwen.sh"), "dsw", "0.5B"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: run_mcore_qwen.sh takes 25 arguments, got 2; {QWEN_USAGE}"
    assert "Traceback" not in result.stderr


def test_train_error_is_the_only_line_in_a_real_process():
    """In process, pytest owns logging; a real `train` process printed the no-TE patch's INFO line first."""
    result = subprocess.run([sys.executable, "-m", "pai_patch", "train", "model.family=gpt5"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: unknown model family 'gpt5'; valid: deepseek_v2, llama2, qwen2_5, qwen3"]


def test_errors_doc_matches_tables():
    assert DOC.read_text() == render_doc(), "docs/errors.md is stale: python tests/test_badinput_cli.py > docs/errors.md"


if __name__ == "__main__":
    sys.stdout.write(render_doc())
