"""pai-patch: reproducible LLM training recipes on Megatron-Core."""

import warnings

# megatron-core warns at import time for every optional CUDA extension it does not find
# (Transformer Engine, Apex); on CPU that is expected, so keep the output readable.
warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex) (and Apex )?(is|are) not installed.*")
warnings.filterwarnings("ignore", message=".*Apex is not installed.*")

__version__ = "26.11.0"
