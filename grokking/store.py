"""The run directory on disk: config, metrics, checkpoints and resume state, all written atomically.

Layout (see checkpoints/README.md):
    config.json                          the RunConfig, enough to rebuild model, task and split
    metrics.csv                          one row per evaluation
    checkpoints/step_XXXXXXX.safetensors model weights with TransformerLens names (7-digit step)
    resume.safetensors                   weights + AdamW state + RNG state of the latest resumable step

Only the latest optimiser state is kept: it triples a checkpoint's size, and 250 of them would break
the run directory's size budget. Nothing here unpickles: tensors are safetensors, the rest JSON/CSV.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from grokking.config import RunConfig
from grokking.errors import UserError

CHECKPOINT_RE = re.compile(r"^step_(\d{7})\.safetensors$")
METRIC_COLUMNS = ["step", "train_loss", "test_loss", "train_acc", "test_acc"]
# What `grokking analyze` and `grokking report` may write into a run directory.
DERIVED_FILES = ("analysis.csv", "analysis.json", "fourier_norms.csv", "analysis_maps.safetensors", "analysis_trees.json", "report.html")


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while writing {path}; free some space and re-run the same command to resume") from None
        raise


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.safetensors"


class RunDir:
    """Paths and reads/writes of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def resume_path(self) -> Path:
        return self.path / "resume.safetensors"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> RunDir:
        """Fail with a clear message unless this is a run directory."""
        if not self.path.is_dir():
            raise UserError(f"no run directory at {self.path}; train one with `grokking train PRESET --out {self.path}`")
        if not self.exists():
            raise UserError(f"{self.path} is not a run directory (no config.json); pass the directory that `grokking train` wrote")
        return self

    # -- config ---------------------------------------------------------------------------------
    def write_config(self, cfg: RunConfig) -> None:
        atomic_write(self.config_path, cfg.to_json().encode())

    def read_config(self) -> RunConfig:
        try:
            data = json.loads(self.config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {self.config_path}: {exc}") from None
        return RunConfig.from_dict(data)

    # -- metrics --------------------------------------------------------------------------------
    def read_metric_rows(self) -> list[dict[str, str]]:
        if not self.metrics_path.is_file():
            return []
        with open(self.metrics_path, newline="") as fh:
            return list(csv.DictReader(fh))

    def truncate_metrics(self, before_step: int) -> None:
        """Keep only rows with step < `before_step`: later rows are recomputed by the resumed run."""
        rows = [r for r in self.read_metric_rows() if int(r["step"]) < before_step]
        if not rows:
            self.metrics_path.unlink(missing_ok=True)
            return
        columns = list(rows[0].keys())
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.metrics_path, buf.getvalue().encode())

    def append_metrics(self, row: dict[str, float]) -> None:
        """Append one evaluation row (a line append is atomic enough: resume truncates torn tails)."""
        new = not self.metrics_path.is_file() or self.metrics_path.stat().st_size == 0
        columns = [c for c in METRIC_COLUMNS if c in row] + sorted(c for c in row if c not in METRIC_COLUMNS)
        line = io.StringIO()
        writer = csv.DictWriter(line, fieldnames=columns, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        try:
            with open(self.metrics_path, "a") as fh:
                fh.write(line.getvalue())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(f"disk full while writing {self.metrics_path}; free some space and re-run to resume") from None
            raise

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoint_dir / checkpoint_name(step)

    def checkpoint_steps(self) -> list[int]:
        if not self.checkpoint_dir.is_dir():
            return []
        steps = [int(m.group(1)) for f in self.checkpoint_dir.iterdir() if (m := CHECKPOINT_RE.match(f.name))]
        return sorted(steps)

    def write_checkpoint(self, step: int, tensors: dict[str, torch.Tensor]) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.checkpoint_path(step), save(_contiguous_cpu(tensors), metadata={"step": str(step)}))

    def read_checkpoint(self, step: int) -> dict[str, torch.Tensor]:
        return read_safetensors(self.checkpoint_path(step))

    def write_resume(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        atomic_write(self.resume_path, save(_contiguous_cpu(tensors), metadata=metadata))

    def read_resume(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        data = _read_bytes(self.resume_path)
        try:
            header_len = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
            return load(data), metadata
        except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
            raise UserError(f"resume state {self.resume_path} is corrupt ({exc}); delete it to resume from scratch with --fresh") from None

    def clear(self) -> None:
        """Remove what a run writes (for `--fresh`), and nothing else."""
        for step in self.checkpoint_steps():
            self.checkpoint_path(step).unlink()
        for path in (self.metrics_path, self.resume_path, self.config_path):
            path.unlink(missing_ok=True)
        for name in DERIVED_FILES:
            (self.path / name).unlink(missing_ok=True)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a truncated or corrupt file into a `UserError` that names it."""
    try:
        return load(_read_bytes(path))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise UserError(f"checkpoint {path} is corrupt or truncated ({exc}); delete it or re-train that step") from None


def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
