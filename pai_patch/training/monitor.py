"""Run records: metrics.jsonl (machine-readable), TensorBoard events, loss-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Monitor:
    """Written by rank 0 only; other ranks get a no-op monitor."""

    def __init__(self, output_dir: str | Path, *, enabled: bool) -> None:
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self._writer = None
        if enabled:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.output_dir / "tensorboard"))
            self._metrics = open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        step = record["iteration"]
        for key, value in record.items():
            if key != "iteration" and isinstance(value, (int, float)):
                self._writer.add_scalar(key.replace(" ", "_"), value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._metrics.close()
        self._writer.close()
        plot_losses(self.output_dir / "metrics.jsonl", self.output_dir / "loss.png")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(metrics: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics)
    train = {r["iteration"]: r["loss"] for r in records if "loss" in r}
    valid = {r["iteration"]: r["valid_loss"] for r in records if "valid_loss" in r}
    if not train:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(list(train), list(train.values()), label="train loss")
    if valid:
        ax.plot(list(valid), list(valid.values()), "o-", label="validation loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(out.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
