"""Where training metrics go: metrics.jsonl, the progress bar, TensorBoard or W&B (rank 0 only).

Every row is a dict with a `step`; held-out evaluation rows carry `"split": "eval"`.
`metrics.jsonl` in the output dir gets each row as one JSON line; on `--resume` the rows
past the resumed step are dropped first, so a resumed run's log reads as one run.
TensorBoard gets `<split>/<key>` scalars (`<key>_<k>` for per-step lists); W&B the same
keys. The W&B run id is kept in `<output-dir>/wandb_run_id` and reused with
`wandb.init(id=..., resume="allow")`, so a resumed run continues the same W&B run
(wandb docs, "Resume runs"). None values (a figure the run cannot know) are not sent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from draftsmith.errors import DraftsmithError
from draftsmith.fsutil import write_text_atomic

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"


class MetricsLogger:
    def __init__(self, output_dir: Path, report_to: str, enabled: bool, config: dict):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / METRICS_FILE
        self.report_to, self.enabled, self.config = report_to, enabled, config
        self._write = None
        self.bar = None

    def open(self, resumed_step: int | None, total_steps: int, progress: bool) -> None:
        """Start logging at `resumed_step` (None: a fresh run, the old log is dropped)."""
        if not self.enabled:
            return
        self._truncate(resumed_step)
        if self.report_to == "tensorboard":
            self._write = self._tensorboard()
        elif self.report_to == "wandb":
            self._write = self._wandb(resumed_step is not None)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=resumed_step or 0, desc="train", unit="step",
                            file=sys.stderr)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._write is not None:
            self._write(row)

    def progress(self, row: dict | None = None) -> None:
        """Advance the bar one step; with a training row, show its loss and both taus."""
        if self.bar is None:
            return
        if row is not None:
            tau = row["tau"]
            self.bar.set_postfix(loss=f"{row['loss_k'][0]:.3f}", tau="?" if tau is None else f"{tau:.2f}",
                                 tau_dv=f"{row['tau_draft_vocab']:.2f}", tok_s=f"{row['tokens_per_s']:.0f}")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _truncate(self, resumed_step: int | None) -> None:
        if not self.path.exists():
            return
        rows = []
        if resumed_step is not None:
            rows = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= resumed_step]
        write_text_atomic(self.path, "".join(r + "\n" for r in rows))

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise DraftsmithError("--report-to tensorboard needs the tensorboard package") from e
        tb = SummaryWriter(str(self.output_dir / "tensorboard"))

        def write(row: dict) -> None:
            prefix = row.get("split", "train")
            for key, value in row.items():
                if isinstance(value, list):
                    for k, v in enumerate(value):
                        tb.add_scalar(f"{prefix}/{key}_{k}", v, row["step"])
                elif isinstance(value, (int, float)) and key != "step":
                    tb.add_scalar(f"{prefix}/{key}", value, row["step"])
            tb.flush()
        return write

    def _wandb(self, resuming: bool):
        try:
            import wandb
        except ImportError as e:
            raise DraftsmithError("--report-to wandb needs the wandb package") from e
        id_file = self.output_dir / WANDB_ID_FILE
        run_id = id_file.read_text(encoding="utf-8").strip() if resuming and id_file.exists() else None
        if run_id is None:
            run_id = wandb.util.generate_id()
            write_text_atomic(id_file, run_id + "\n")
        run = wandb.init(project="draftsmith", id=run_id, resume="allow", config=self.config,
                         dir=str(self.output_dir))

        def write(row: dict) -> None:
            run.log({f"{row.get('split', 'train')}/{k}": v for k, v in row.items()
                     if k != "split" and v is not None}, step=row["step"])
        return write
