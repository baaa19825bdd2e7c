"""Data preparation: JSON corpora and instruction data to Megatron idxmap datasets.

Modules: ``indexed`` (the ``.bin/.idx`` format, byte-identical to megatron-core's builder),
``records`` (streaming JSON/JSONL/gzip reader with line numbers), ``tokenizer`` (offline
tokenizer loading), ``fast_bpe`` (exact ASCII shortcut for byte-level BPE), ``pretrain`` (corpus
preprocessing), ``sidecar`` (which tokenizer made a dataset), ``sft_format`` (templates and loss
masks), ``sft`` (instruction data and the SFT datasets the trainer consumes), ``cli`` /
``inspect_cli`` (the commands).
"""
