"""Run ``python -m pai_patch ARGS`` with one torchrun worker's file size capped, as a full disk on that rank only.

Used as torchrun's script: ``torchrun ... tests/faults/limit_rank.py RANK BYTES train ...``.  Only the
worker whose ``RANK`` matches gets ``RLIMIT_FSIZE`` (writes past it fail with EFBIG); the others run
unchanged, so one rank's checkpoint write fails while the other ranks' succeed.
"""

from __future__ import annotations

import os
import resource
import signal
import sys

if __name__ == "__main__":
    failing_rank, limit, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    if int(os.environ.get("RANK", "0")) == failing_rank:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from pai_patch.cli import main

    sys.exit(main(argv))
