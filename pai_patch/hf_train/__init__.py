"""HF + DeepSpeed ZeRO training of any transformers causal LM (the seeds' Llama2 ``ds_train_huggingface`` flow).

``config`` renders the DeepSpeed JSON from its template, ``data`` turns JSON records into
token batches, ``trainer`` runs the epochs; ``python -m pai_patch hf_train`` is the CLI.
"""
