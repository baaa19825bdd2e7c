"""Text generation from Megatron-Core (any TP) or HF checkpoints with our own KV-cached sampling loop.

One loop (:mod:`.engine`) drives either backend (:mod:`.decoders`), so greedy output can be
checked token for token against transformers' ``generate`` on the converted HF model.
"""
