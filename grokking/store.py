"""The run directory on disk: config, metrics, checkpoints and resume state, all written atomically.

Layout (see checkpoints/README.md; `RunDir` owns every name, derived files included):
    config.json                          the RunConfig, enough to rebuild model, task and split
    metrics.csv                          one row per evaluation
    checkpoints/step_XXXXXXX.safetensors model weights with TransformerLens names (7-digit step)
    resume.safetensors                   weights + AdamW state + RNG state of the latest resumable step
    .lock                                held by the one writer
    DERIVED_FILES                        what analyze, report, llc-calibrate and metric-lens write

Only the latest optimiser state is kept: it triples a checkpoint's size, and 250 of them would break
the run directory's size budget. Nothing here unpickles: tensors are safetensors, the rest JSON/CSV.
torch and safetensors are imported only by the tensor functions, so reading a run's config and metrics
(reports, sweeps, notebooks) does not pay for importing torch.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grokking.config import ModelConfig, RunConfig, TaskConfig, TrainConfig, _parse_value
from grokking.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import torch

CHECKPOINT_RE = re.compile(r"^step_(\d{7})\.safetensors$")
METRIC_COLUMNS = ["step", "train_loss", "test_loss", "train_acc", "test_acc"]
CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR, RESUME_FILE, LOCK_FILE = "config.json", "metrics.csv", "checkpoints", "resume.safetensors", ".lock"
# What `grokking analyze`, `report`, `llc-calibrate` and `metric-lens` may write into a run directory, by the
# RunDir property that names each; `--fresh` removes them with the run.
DERIVED = {
    "analysis_path": "analysis.csv",  # one row per checkpoint, `step` first
    "analysis_summary_path": "analysis.json",  # the run-level summary and the plan's signature
    "fourier_norms_path": "fourier_norms.csv",  # modular: W_E and W_L norm per frequency per checkpoint
    "analysis_maps_path": "analysis_maps.safetensors",  # modular: (a, b) heat-maps at a few steps
    "analysis_trees_path": "analysis_trees.json",  # language: tree projections of one sentence at a few steps
    "icl_curves_path": "icl_curves.csv",  # icl-functions: error against k for the final model and baselines
    "llc_path": "llc.csv",  # one row per estimated checkpoint
    "llc_settings_path": "llc.json",  # the SGLD settings llc.csv was estimated with
    "llc_calibration_path": "llc_calibration.csv",
    "llc_calibration_traces_path": "llc_calibration_traces.csv",
    "llc_calibration_page_path": "llc_calibration.html",
    "metric_lens_page_path": "metric_lens.html",
    "metric_lens_path": "metric_lens.csv",  # one row per metric: its emergence score over training
    "report_path": "report.html",
}
DERIVED_FILES = tuple(DERIVED.values())
TEMP_GLOB = ".*.tmp-*"  # what atomic_write leaves behind when killed before its rename


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
            raise disk_full(path) from None
        raise


def disk_full(path: Path) -> UserError:
    """The one line for ENOSPC/EDQUOT: the file, the disk (its mount point) and what is left on it."""
    mount = path.parent.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        free = f"{shutil.disk_usage(mount).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return UserError(f"disk full while writing {path} (disk mounted at {mount}, {free}); free some space there and re-run the same command to resume")


def warn(message: str) -> None:
    """A damaged file that does not stop the load: one line on stderr, the rest of the run still loads."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextmanager
def directory_lock(directory: Path, holder: str) -> Iterator[None]:
    """Hold DIRECTORY/.lock exclusively, or refuse in one line naming the holder.

    `fcntl.flock` belongs to the open file, so the kernel drops it when the holder exits or is killed:
    a crash never leaves a stale lock, and no pid has to be checked for liveness. The file itself stays
    (deleting it would let a third process lock a new inode while the second still holds the old one).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{directory} is in use by {who}; wait for it to finish, or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} (pid {os.getpid()} on {socket.gethostname()})\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.safetensors"


def write_csv(path: Path, table: pd.DataFrame) -> None:
    """A table as CSV (no index), written atomically: the one way the lab writes a table."""
    atomic_write(path, table.to_csv(index=False).encode())


def _derived(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"RUN/{name}")


class RunDir:
    """Paths and reads/writes of one run directory."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __fspath__(self) -> str:
        """A RunDir is path-like: `Path(run_dir)` and `RunDir(run_dir)` accept one."""
        return str(self.path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def resume_path(self) -> Path:
        return self.path / RESUME_FILE

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    analysis_path = _derived(DERIVED["analysis_path"])
    analysis_summary_path = _derived(DERIVED["analysis_summary_path"])
    fourier_norms_path = _derived(DERIVED["fourier_norms_path"])
    analysis_maps_path = _derived(DERIVED["analysis_maps_path"])
    analysis_trees_path = _derived(DERIVED["analysis_trees_path"])
    icl_curves_path = _derived(DERIVED["icl_curves_path"])
    llc_path = _derived(DERIVED["llc_path"])
    llc_settings_path = _derived(DERIVED["llc_settings_path"])
    llc_calibration_path = _derived(DERIVED["llc_calibration_path"])
    llc_calibration_traces_path = _derived(DERIVED["llc_calibration_traces_path"])
    llc_calibration_page_path = _derived(DERIVED["llc_calibration_page_path"])
    metric_lens_page_path = _derived(DERIVED["metric_lens_page_path"])
    metric_lens_path = _derived(DERIVED["metric_lens_path"])
    report_path = _derived(DERIVED["report_path"])

    def exists(self) -> bool:
        return self.config_path.is_file()

    @contextmanager
    def locked(self, holder: str) -> Iterator[None]:
        """Only one writer at a time (see `directory_lock`); temporaries left by a killed writer are removed."""
        with directory_lock(self.path, holder):
            for directory in (self.path, self.checkpoint_dir):
                for stale in directory.glob(TEMP_GLOB):
                    stale.unlink(missing_ok=True)
            yield

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
        """The run's config; a hand-edited file loads with one warning per unknown key or convertible value."""
        try:
            data = json.loads(self.config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {self.config_path}: {exc}") from None
        try:
            return RunConfig.from_dict(_checked_config(data, self.config_path))
        except UserError as exc:
            raise UserError(f"{self.config_path}: {exc}") from None

    # -- derived files ----------------------------------------------------------------------------
    def require_derived(self, *paths: Path, command: str = "grokking analyze") -> None:
        """Fail in one line, naming the first missing file and the command that writes it."""
        for path in paths:
            if not path.is_file():
                raise UserError(f"{self.path} has no {path.name}; run `{command} {self.path}` first")

    def read_table(self, path: Path, columns: Sequence[str] = (), command: str = "grokking analyze") -> pd.DataFrame:
        """A derived CSV; missing, unreadable or without `columns` (an older version, a hand edit) is one line
        saying to re-run `command`, not a traceback from a figure."""
        import pandas as pd

        self.require_derived(path, command=command)
        fix = f"re-run `{command} {self.path}`"
        try:
            table = pd.read_csv(path)
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise UserError(f"cannot read {path} ({' '.join(str(exc).split())}); {fix}") from None
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise UserError(f"{path} is from an older version or was edited (no column {', '.join(missing)}); {fix}")
        return table

    def read_json(self, path: Path, command: str = "grokking analyze") -> Any:
        """A derived JSON file, or one line saying which command writes it."""
        self.require_derived(path, command=command)
        try:
            return json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {path} ({exc}); re-run `{command} {self.path}`") from None

    # -- metrics --------------------------------------------------------------------------------
    def read_metric_rows(self) -> list[dict[str, str]]:
        """Whole rows only: a line cut short (a killed or running writer, a hand edit) is skipped with one warning."""
        lines = self._whole_metric_lines()
        return list(csv.DictReader(lines))

    def read_metrics_table(self) -> pd.DataFrame:
        """metrics.csv as a table of its whole rows (see `read_metric_rows`)."""
        import pandas as pd

        lines = self._whole_metric_lines()
        if len(lines) < 2:
            return pd.DataFrame(columns=lines[0].split(",") if lines else METRIC_COLUMNS)
        return pd.read_csv(io.StringIO("\n".join(lines)))

    def last_metric_step(self) -> int | None:
        """The step of metrics.csv's last whole row, read without pandas and without warnings: resume
        decisions stay cheap, and a torn tail is the resumed run's to rewrite."""
        lines = self._whole_metric_lines(quiet=True)
        return int(lines[-1].split(",", 1)[0]) if len(lines) > 1 else None

    def _whole_metric_lines(self, quiet: bool = False) -> list[str]:
        """The header and every row with the header's number of fields and an integer step, in file order."""
        if not self.metrics_path.is_file():
            return []
        try:
            text = self.metrics_path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {self.metrics_path}: {exc}") from None
        lines = text.split("\n")
        torn_tail = lines.pop() != ""  # what follows the last newline: empty unless the last line is unfinished
        if not lines:
            return []
        width = len(next(csv.reader(lines[:1])))
        good, bad = lines[:1], []
        for number, line in enumerate(lines[1:], start=2):
            fields_ = next(csv.reader([line]), [])
            if len(fields_) == width and _is_int(fields_[0]):
                good.append(line)
            elif line:
                bad.append(number)
        if torn_tail:
            bad.append(len(lines) + 1)
        if bad and not quiet:
            warn(
                f"{self.metrics_path}: skipped {len(bad)} incomplete line(s) (line {', '.join(map(str, bad[:5]))}); "
                f"the other {len(good) - 1} rows load"
            )
        return good

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
        data = memoryview(line.getvalue().encode())
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError as exc:
            if os.path.isfile(self.metrics_path):
                os.ftruncate(fd, size)  # a failed append leaves no part of its line (truncating needs no space)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(self.metrics_path) from None
            raise
        finally:
            os.close(fd)

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoint_dir / checkpoint_name(step)

    def checkpoint_steps(self) -> list[int]:
        if not self.checkpoint_dir.is_dir():
            return []
        steps = [int(m.group(1)) for f in self.checkpoint_dir.iterdir() if (m := CHECKPOINT_RE.match(f.name))]
        return sorted(steps)

    def write_checkpoint(self, step: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.checkpoint_path(step), save(_contiguous_cpu(tensors), metadata={"step": str(step)}))

    def read_checkpoint(self, step: int) -> dict[str, torch.Tensor]:
        return read_safetensors(self.checkpoint_path(step))

    def write_resume(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        from safetensors.torch import save

        atomic_write(self.resume_path, save(_contiguous_cpu(tensors), metadata=metadata))

    def read_resume(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        from safetensors import SafetensorError
        from safetensors.torch import load

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


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


CONFIG_GROUPS = {"model": ModelConfig, "task": TaskConfig, "train": TrainConfig}


def _checked_config(data: Any, path: Path) -> dict[str, Any]:
    """A config.json's dict, with unknown keys dropped and values of the wrong type converted, one warning each.

    A value converts when the `--set` parser reads its text as the field's type ("23" -> 23 for `p`);
    one that does not is a one-line error naming the key (`read_config` adds the file's name).
    """
    if not isinstance(data, dict):
        raise UserError("not a grokking run config (a JSON object); re-create the run")
    data = dict(data)
    for key in [k for k in data if k not in (*CONFIG_GROUPS, "preset")]:
        warn(f"{path}: ignored unknown key '{key}'")
        del data[key]
    for group, cls in CONFIG_GROUPS.items():
        if not isinstance(data.get(group), dict):
            continue
        values = dict(data[group])
        defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        known = {f.name for f in fields(cls)}
        for key in list(values):
            if key not in known:
                warn(f"{path}: ignored unknown key '{group}.{key}'")
                del values[key]
            elif key in defaults and defaults[key] is not None and not _same_type(values[key], defaults[key]):
                raw = ",".join(map(str, values[key])) if isinstance(values[key], list) else str(values[key])
                try:
                    converted = _parse_value(key, raw, defaults[key])
                except UserError:
                    raise UserError(f"{group}.{key} should be {type(defaults[key]).__name__}, got {values[key]!r}; fix or delete that key") from None
                warn(f"{path}: {group}.{key} is {values[key]!r} ({type(values[key]).__name__}), read as {converted!r}")
                values[key] = list(converted) if isinstance(converted, tuple) else converted
        data[group] = values
    return data


def _same_type(value: Any, default: Any) -> bool:
    """JSON's view of a field's type: ints pass as floats, lists as tuples, bools only as bools."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, tuple):
        return isinstance(value, list)
    return isinstance(value, type(default))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a truncated or corrupt file into a `UserError` that names it."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(_read_bytes(path))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise UserError(f"checkpoint {path} is corrupt or truncated ({exc}); delete it or re-train that step") from None


def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
