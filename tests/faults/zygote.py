"""Fork server for the fault suite: imports the training stack once, then forks each run.

Every training run of the suite is its own OS process (forked from here, in its own
session), killed with a real SIGKILL; forking from a pre-imported parent only saves the
~15 s of imports per run that 20+ kills would otherwise cost on a small CI machine.

Protocol (JSON lines): stdin ``{"argv": [...], "log": path, "env": {...}, "fsize": bytes|null}``;
stdout ``{"pid": N}``.  When a child ends, its status goes to ``<log>.rc`` (``-9`` when killed).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys


def _child(req: dict) -> None:
    os.setsid()
    for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.environ.update(req.get("env") or {})
    if req.get("fsize"):
        import resource

        # a file-size limit as a stand-in for a full disk: writes past it fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
    rc = 1
    try:
        from pai_patch.cli import main

        rc = main(req["argv"])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - a traceback in the log is what the test reports
        import traceback

        traceback.print_exc()
        rc = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(rc)


def main() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    import pai_patch  # noqa: F401  (first: its filters quiet megatron-core's missing-TE/Apex import warnings)

    # the training stack, the tokenizer (transformers) and the checkpoint/dataset code
    import megatron.core.datasets.blended_megatron_dataset_builder  # noqa: F401
    import megatron.core.datasets.gpt_dataset  # noqa: F401
    import megatron.core.dist_checkpointing.strategies.torch  # noqa: F401
    import megatron.core.optimizer  # noqa: F401
    import megatron.core.pipeline_parallel  # noqa: F401

    import pai_patch.training.checkpointing  # noqa: F401
    import pai_patch.training.cli  # noqa: F401
    import pai_patch.training.loop  # noqa: F401
    from pai_patch.data.tokenizer import load_tokenizer
    from pai_patch.models import get_family

    load_tokenizer("shipped")
    get_family("qwen2_5")
    print("ready", flush=True)
    logs: dict[int, str] = {}
    while True:
        while logs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            rc = os.waitstatus_to_exitcode(status)
            with open(logs.pop(pid) + ".rc", "w") as handle:
                handle.write(str(rc))
        ready, _, _ = select.select([sys.stdin], [], [], 0.02)
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:
            return
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req)
        logs[pid] = req["log"]
        print(json.dumps({"pid": pid}), flush=True)


if __name__ == "__main__":
    main()
