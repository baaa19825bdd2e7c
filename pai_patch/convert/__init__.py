"""HF <-> Megatron-Core checkpoint conversion, driven by each family's declarative mapping.

``mapping`` holds the vocabulary families describe themselves in; ``layout`` turns a
mapping into per-rank tensors (TP/PP/EP); ``hf``, ``legacy`` and ``dist`` read and
write the three on-disk formats; ``engine`` streams tensors from one to another;
``io.load_model_checkpoint`` is what the trainer calls; ``marker`` writes and checks the
``COMPLETE.json`` every reader verifies first.
"""
