"""Import models trained elsewhere as run directories: `grokking import FILE --format tl|nanda --out RUN_DIR`.

Why: the paper's released runs and TransformerLens models should be analysed by the same code as
our own runs, so an import writes exactly what `grokking train` writes (config.json, TL-layout
safetensors checkpoints, metrics.csv) and `grokking analyze` / `report` need nothing special.

Formats:
* `nanda`: the paper's own `Transformer` (mechanistic-interpretability-grokking/progress-measures-paper,
  `transformers.py`): `embed.W_E [d_model, d_vocab]`, `W_Q/W_K/W_V [heads, d_head, d_model]`,
  `W_O [d_model, heads * d_head]` (z flattened head-major), `W_in [d_mlp, d_model]`,
  `W_out [d_model, d_mlp]`, `unembed.W_U [d_model, p + 1]`, no attention or unembedding biases.
* `tl`: TransformerLens names and shapes, as our checkpoints.

A file holds one state dict, or a run: `{"checkpoints": [...], "checkpoint_epochs": [...]}` (the
TransformerLens grokking demo), `{"state_dicts": [...], "config": {...}}` (the paper's full run,
one state dict every `save_every` epochs), `{"model": ..., "epoch": ...}`, `{epoch: state_dict}` or
`[(epoch, state_dict), ...]`. Epochs become steps. The paper's split came from
`random.seed(seed); random.shuffle(pairs)`, so imported `nanda` runs use `split="python-shuffle"`.

Safety: `.pt`/`.pth` files are read with `torch.load(weights_only=True)` (tensors and plain
containers only; no custom classes, no code), `.safetensors` with safetensors.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm.auto import tqdm

from grokking.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
from grokking.errors import UserError
from grokking.model import Transformer, load_tensors
from grokking.objectives import ModularObjective
from grokking.store import RunDir
from grokking.tasks.modular import ModularTask
from grokking.tasks.registry import build_task, sized

FORMATS = ("tl", "nanda")
TORCH_SUFFIXES = (".pt", ".pth")
# Buffers that TransformerLens or the paper's code keep but our model derives itself.
DERIVED_BUFFERS = re.compile(r"(^|\.)(IGNORE|mask)$|(^|\.)hook_")
# Dimensions of each weight in the paper's layout, checked before any reshaping.
NANDA_NDIM = {"W_E": 2, "W_pos": 2, "W_Q": 3, "W_K": 3, "W_V": 3, "W_O": 2, "W_in": 2, "W_out": 2, "W_U": 2, "b_in": 1, "b_out": 1}
# The paper's `fn_name` -> our `operation` ('rand' drew an unseeded numpy table that cannot be rebuilt).
PAPER_OPERATIONS = {"add": "add", "subtract": "subtract", "x2xyy2": "x2xyy2"}
PAPER_DEFAULT_SEED = 0  # `Config.seed` in the paper's transformers.py

Checkpoints = list[tuple[int, dict[str, Tensor]]]


def import_run(
    file: Path,
    fmt: str,
    out: Path,
    *,
    p: int | None = None,
    frac_train: float | None = None,
    data_seed: int | None = None,
    operation: str = "add",
    n_outputs: int | None = None,
    progress: bool = True,
) -> Path:
    """Convert every model in `file` into a new run directory `out`; returns `out`.

    p, frac_train and data_seed come from the file's saved config when it has one, else from the
    arguments (defaults 113, 0.3, and the seed of the format's own code). `n_outputs` is inferred from
    W_U (p, or p + 1 for the paper's models); passing it only checks the file against it.
    """
    file, out = Path(file), Path(out)
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(f"{out} already exists; import into a new --out directory")
    raw = read_weights_file(file)
    checkpoints, saved = _checkpoints(raw, file)
    if fmt != "nanda":
        saved = {}  # only the paper's config keys (p, frac_train, seed = split seed, ...) mean what we read them as
    convert = nanda_to_tl if fmt == "nanda" else tl_to_tl
    checkpoints = [(epoch, convert(state, file)) for epoch, state in checkpoints]
    cfg = _run_config(checkpoints, saved, fmt, p, frac_train, data_seed, operation, n_outputs, file)
    task = build_task(cfg)
    cfg = sized(cfg, task)
    _check_split(raw, task.train_idx, file)
    expected = Transformer(cfg.model).state_dict()
    for _, tensors in checkpoints:
        _check_shapes(expected, tensors, file)
    _write_run(cfg, task, checkpoints, out, progress)
    return out


# --- reading ------------------------------------------------------------------------------------------


def read_weights_file(path: Path) -> Any:
    """The file's contents, loaded without running any code from it; a `UserError` naming it otherwise."""
    if not path.is_file():
        raise UserError(f"no file at {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise UserError(f"cannot import {path}: expected a .pt, .pth or .safetensors file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():
            raise UserError(
                f"{path} holds Python objects other than tensors and plain containers (e.g. a config "
                "class), which are not unpickled for safety; re-save it with state dicts and a dict config"
            ) from None
        raise UserError(f"{path} is corrupt or not a PyTorch file ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise UserError(f"{path} is corrupt or truncated ({_first_line(exc)})") from None


def _read_safetensors(path: Path) -> dict[str, Any]:
    """One state dict, at the step our own checkpoints record in their metadata (else 0)."""
    try:
        with safe_open(path, framework="pt") as fh:
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
            step = (fh.metadata() or {}).get("step", "0")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is corrupt or truncated ({_first_line(exc)})") from None
    return {"model": tensors, "epoch": int(step)}


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _checkpoints(raw: Any, file: Path) -> tuple[Checkpoints, Mapping[str, Any]]:
    """(epoch, state dict) pairs sorted by epoch, and the file's saved config (empty if none)."""
    saved = raw.get("config", {}) if isinstance(raw, Mapping) else {}
    if not isinstance(saved, Mapping):
        raise UserError(f"{file}: 'config' is a {type(saved).__name__}, not a dict")
    if isinstance(raw, Mapping) and "checkpoints" in raw:
        pairs = _zip_epochs(raw["checkpoints"], raw.get("checkpoint_epochs"), file)
    elif isinstance(raw, Mapping) and "state_dicts" in raw:
        every = int(saved.get("save_every", 100))
        states = raw["state_dicts"]
        pairs = _zip_epochs(states, raw.get("checkpoint_epochs", [i * every for i in range(len(states))]), file)
    elif isinstance(raw, Mapping) and "model" in raw:
        pairs = [(raw.get("epoch", 0), raw["model"])]
    elif isinstance(raw, Mapping) and raw and all(isinstance(k, int) for k in raw):
        pairs = list(raw.items())
    elif isinstance(raw, Mapping) and raw and all(isinstance(v, Tensor) for v in raw.values()):
        pairs = [(0, raw)]
    elif isinstance(raw, (list, tuple)) and raw and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in raw):
        pairs = [tuple(x) for x in raw]
    else:
        raise UserError(
            f"{file} holds no model: expected a state dict, a run dict with 'checkpoints' and "
            f"'checkpoint_epochs', a dict {{epoch: state_dict}} or a list of (epoch, state_dict)"
        )
    return _validated(pairs, file), saved


def _zip_epochs(states: Any, epochs: Any, file: Path) -> list[tuple[Any, Any]]:
    if not isinstance(states, (list, tuple)) or not isinstance(epochs, (list, tuple, Tensor, type(None))):
        raise UserError(f"{file}: checkpoints and their epochs must be lists")
    if epochs is None or len(epochs) != len(states):
        raise UserError(f"{file}: {len(states)} checkpoints but {'no' if epochs is None else len(epochs)} checkpoint_epochs")
    return list(zip(epochs, states))


def _validated(pairs: list[tuple[Any, Any]], file: Path) -> Checkpoints:
    """Epochs must be distinct non-negative integers and every model a dict of tensors."""
    epochs = [int(e) if isinstance(e, (int, Tensor)) and torch.as_tensor(e).numel() == 1 else -1 for e, _ in pairs]
    if not epochs:
        raise UserError(f"{file} holds an empty run")
    if min(epochs) < 0 or len(set(epochs)) != len(epochs):
        raise UserError(f"{file}: epochs must be distinct non-negative integers, got {sorted(epochs)[:5]}...")
    for epoch, state in pairs:
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise UserError(f"{file}: the model at epoch {epoch} is not a state dict of tensors")
    return sorted(((e, dict(s)) for e, (_, s) in zip(epochs, pairs)), key=lambda pair: pair[0])


# --- conversion ---------------------------------------------------------------------------------------


def nanda_to_tl(state: Mapping[str, Tensor], file: Path) -> dict[str, Tensor]:
    """The paper's layout -> TransformerLens names and shapes (transposes, and W_O split per head)."""
    tensors: dict[str, Tensor] = {}
    for key, value in state.items():
        if DERIVED_BUFFERS.search(key):
            continue
        name = key.rsplit(".", 1)[-1]
        if NANDA_NDIM.get(name) != value.ndim:
            raise UserError(f"{file}: unexpected key '{key}' with shape {list(value.shape)} for --format nanda")
        if name in ("W_Q", "W_K", "W_V"):
            tensors[key] = value.transpose(-1, -2)  # [heads, d_head, d_model] -> [heads, d_model, d_head]
        elif name == "W_O":
            tensors[key] = _split_heads(value, _required(state, key[: -len("W_O")] + "W_Q", file, ndim=3).shape[0], key, file)
        elif name in ("W_E", "W_in", "W_out"):
            tensors[key] = value.T
        else:
            tensors[key] = value
    return _with_zero_biases(tensors, file)


def _split_heads(W_O: Tensor, heads: int, key: str, file: Path) -> Tensor:
    """[d_model, heads * d_head] with head-major columns (the paper flattens z as (head, d_head)) -> [heads, d_head, d_model]."""
    if W_O.shape[1] % heads:
        raise UserError(f"{file}: '{key}' has {W_O.shape[1]} columns, not a multiple of {heads} heads")
    return rearrange(W_O, "d (h e) -> h e d", h=heads)


def tl_to_tl(state: Mapping[str, Tensor], file: Path) -> dict[str, Tensor]:
    """TransformerLens weights without the buffers our model derives, and zeros for missing biases."""
    return _with_zero_biases({k: v for k, v in state.items() if not DERIVED_BUFFERS.search(k)}, file)


def _with_zero_biases(tensors: dict[str, Tensor], file: Path) -> dict[str, Tensor]:
    """Fill absent attention / unembedding biases with zeros: checkpoints always have the TL layout."""
    d_model = _required(tensors, "embed.W_E", file, ndim=2).shape[1]
    for block in _block_prefixes(tensors):
        heads, _, d_head = _required(tensors, f"{block}.attn.W_Q", file, ndim=3).shape
        for name, shape in (("b_Q", (heads, d_head)), ("b_K", (heads, d_head)), ("b_V", (heads, d_head)), ("b_O", (d_model,))):
            tensors.setdefault(f"{block}.attn.{name}", torch.zeros(shape))
    tensors.setdefault("unembed.b_U", torch.zeros(_required(tensors, "unembed.W_U", file, ndim=2).shape[1]))
    return {k: v.detach().float() for k, v in tensors.items()}  # views where possible: a full run is large


def _block_prefixes(tensors: Mapping[str, Tensor]) -> list[str]:
    indices = {int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k))}
    return [f"blocks.{i}" for i in sorted(indices)]


def _required(tensors: Mapping[str, Tensor], key: str, file: Path, ndim: int | None = None) -> Tensor:
    """`tensors[key]`, or a `UserError` naming the key when it is absent or has the wrong number of dimensions."""
    if key not in tensors:
        raise UserError(f"{file}: missing '{key}'; is --format right?")
    if ndim is not None and tensors[key].ndim != ndim:
        raise UserError(f"{file}: '{key}' has shape {list(tensors[key].shape)}, expected {ndim} dimensions")
    return tensors[key]


# --- config -------------------------------------------------------------------------------------------


def _run_config(
    checkpoints: Checkpoints,
    saved: Mapping[str, Any],
    fmt: str,
    p: int | None,
    frac_train: float | None,
    data_seed: int | None,
    operation: str,
    n_outputs: int | None,
    file: Path,
) -> RunConfig:
    """The run's config: architecture inferred from the final weights, task and split from the file or arguments."""
    final = checkpoints[-1][1]
    task = _task_config(saved, fmt, p, frac_train, data_seed, operation)
    outputs = final["unembed.W_U"].shape[1]
    if n_outputs is not None and n_outputs != outputs:
        raise UserError(f"{file}: unembed.W_U has {outputs} outputs, not n_outputs={n_outputs}")
    if outputs not in (task.p, task.p + 1):
        raise UserError(f"{file}: unembed.W_U has {outputs} outputs but p={task.p} needs {task.p} or {task.p + 1}; pass the right --p")
    task.n_outputs = 0 if outputs == task.p else outputs
    epochs = [epoch for epoch, _ in checkpoints]
    gaps = [b - a for a, b in zip(epochs, epochs[1:])]
    train = TrainConfig(seed=0, steps=epochs[-1], eval_every=min(gaps, default=1), checkpoint_every=min(gaps, default=1))
    train.lr = float(saved.get("lr", train.lr))
    train.weight_decay = float(saved.get("weight_decay", train.weight_decay))
    cfg = RunConfig(model=_model_config(final, file), task=task, train=train, preset="imported")
    cfg.validate()
    return cfg


def _task_config(saved: Mapping[str, Any], fmt: str, p: int | None, frac_train: float | None, data_seed: int | None, operation: str) -> TaskConfig:
    if "fn_name" in saved and saved["fn_name"] not in PAPER_OPERATIONS:
        raise UserError(f"the run's operation '{saved['fn_name']}' cannot be rebuilt here (its table was not seeded)")
    nanda = fmt == "nanda"
    return TaskConfig(
        p=int(_pick(saved, "p", p, 113)),
        operation=PAPER_OPERATIONS.get(saved.get("fn_name"), operation),
        frac_train=float(_pick(saved, "frac_train", frac_train, 0.3)),
        data_seed=int(_pick(saved, "seed", data_seed, PAPER_DEFAULT_SEED if nanda else TaskConfig.data_seed)),
        split="python-shuffle" if nanda else "seeded",
    )


def _pick(saved: Mapping[str, Any], key: str, given: Any, default: Any) -> Any:
    """The file's value, else the argument, else the default; an argument that contradicts the file is an error, not ignored."""
    if key not in saved:
        return default if given is None else given
    if given is not None and given != saved[key]:
        raise UserError(f"the file's config has {key}={saved[key]}, which the run was trained with; drop the conflicting {key}={given}")
    return saved[key]


def _model_config(tensors: Mapping[str, Tensor], file: Path) -> ModelConfig:
    """Sizes from the weight shapes; biases count as trained only where the file has non-zero ones."""
    heads, d_model, d_head = _required(tensors, "blocks.0.attn.W_Q", file, ndim=3).shape
    d_mlp = _required(tensors, "blocks.0.mlp.W_in", file, ndim=2).shape[1]
    attn_bias = any(tensors[k].any() for k in tensors if re.search(r"\.attn\.b_[QKVO]$", k))
    return ModelConfig(
        n_layers=len(_block_prefixes(tensors)),
        d_model=d_model,
        n_heads=heads,
        d_head=d_head,
        d_mlp=d_mlp,
        act_fn="relu",
        normalization="none",
        positional="learned",
        attn_bias=bool(attn_bias),
        unembed_bias=bool(tensors["unembed.b_U"].any()),
    )


def _check_split(raw: Any, train_idx: Tensor, file: Path) -> None:
    """A file that records its training indices must agree with the split we rebuild, or its metrics would lie."""
    recorded = raw.get("train_indices") if isinstance(raw, Mapping) else None
    if recorded is not None and set(torch.as_tensor(recorded).tolist()) != set(train_idx.tolist()):
        raise UserError(f"{file}: its train_indices differ from the split rebuilt from p, frac_train and seed; check --seed")


def _check_shapes(expected: Mapping[str, Tensor], tensors: Mapping[str, Tensor], file: Path) -> None:
    """Name the first key that does not fit the model the config describes."""
    for key in sorted(set(expected) | set(tensors)):
        if key not in tensors:
            raise UserError(f"{file}: missing '{key}'")
        if key not in expected:
            raise UserError(f"{file}: unexpected key '{key}' (LayerNorm and other extras are not supported)")
        if expected[key].shape != tensors[key].shape:
            raise UserError(f"{file}: '{key}' has shape {list(tensors[key].shape)}, the model needs {list(expected[key].shape)}")


# --- writing ------------------------------------------------------------------------------------------


def _write_run(cfg: RunConfig, task: ModularTask, checkpoints: Checkpoints, out: Path, progress: bool) -> None:
    """Write into a hidden sibling directory and rename it at the end, so a failure leaves nothing behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.importing-{os.getpid()}"
    run = RunDir(staging)
    objective = ModularObjective(task, 0, torch.device("cpu"))
    try:
        staging.mkdir()
        run.write_config(cfg)
        for epoch, tensors in tqdm(checkpoints, desc="import", unit="ckpt", disable=not progress, dynamic_ncols=True):
            model = load_tensors(Transformer(cfg.model), tensors).eval()
            _check_finite(model, task.tokens[:8], epoch)
            run.write_checkpoint(epoch, tensors)
            run.append_metrics({"step": epoch, **objective.evaluate(model, None)})
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_finite(model: Transformer, tokens: Tensor, epoch: int) -> None:
    with torch.no_grad():
        if not torch.isfinite(model(tokens)).all():
            raise UserError(f"the model at epoch {epoch} gives non-finite logits; the file's weights are broken")
