"""Run configuration: three dataclasses (model, task, training) and the named presets.

A run is fully described by its `RunConfig`; `config.json` in the run directory is its JSON form, so
a run can always be rebuilt without the preset that created it. `--set key=value` uses flat key names
(`p`, `lr`, `n_layers`, ...) that are unique across the three groups.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from grokking.errors import UserError
from grokking.families import family_of, tasks_where

ACT_FNS = ("relu", "gelu")
NORMALIZATIONS = ("none", "pre", "post")
POSITIONALS = ("learned", "sinusoidal")
OPERATIONS = ("add", "subtract", "x2xyy2", "random")
INITS = ("nanda", "tl", "torch")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "auto")
GRAD_FILTERS = ("none", "ema", "ma")  # Grokfast (Lee et al. 2024); see grokking/grad_filter.py
LR_SCHEDULES = ("constant", "linear")
SPLITS = ("seeded", "python-shuffle")
MIXES = ("published", "grammar")  # structure mix of the data of tasks whose family has `mix` (grokking/families.py)
ICL_FAMILIES = ("linear", "sparse-linear", "sinusoid", "relu-net")


@dataclass
class ModelConfig:
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    act_fn: str = "relu"
    normalization: str = "none"
    positional: str = "learned"
    attn_bias: bool = False
    unembed_bias: bool = False
    tied_embeddings: bool = False
    dropout: float = 0.0
    init: str = "nanda"
    # Filled in from the task when the model is built; recorded so that a checkpoint is self-describing.
    d_vocab: int = 0
    d_vocab_out: int = 0
    n_ctx: int = 0
    # Real-valued inputs (icl-functions): embed.W_E [d_vocab, d_model] is a linear read-in applied to each position's
    # d_vocab numbers instead of a token lookup; the read-out is the unembedding with d_vocab_out = 1.
    read_in: bool = False


@dataclass
class TaskConfig:
    task: str = "modular"
    # modular arithmetic
    p: int = 113
    operation: str = "add"
    frac_train: float = 0.3
    data_seed: int = 598
    # "seeded": torch permutation by data_seed; "python-shuffle": random.seed(data_seed) + random.shuffle of
    # the a-major pair list, which is how the paper's released runs fixed their split (for imported runs).
    split: str = "seeded"
    n_outputs: int = 0  # output classes; 0 means p (the paper's own code used p + 1)
    # synthetic languages (question-formation, tense-inflection, dyck)
    data_dir: str = ""  # published-format files to train on instead of generated ones
    max_len: int = 0  # drop training sequences longer than this many tokens (0 = keep all)
    eval_examples: int = 1000  # examples of each split scored at every evaluation
    # question-formation / tense-inflection structure mix: "published" (McCoy et al.'s files) or "grammar"
    # (rule weights). A config.json without this key predates it and was trained on "grammar" (see from_dict).
    mix: str = "published"
    # digit addition: n-digit + n-digit; the test set is `eval_examples` pairs, drawn apart from the training pairs
    n_digits: int = 3
    n_train: int = 10_000
    # in-context functions: comma-separated families (see ICL_FAMILIES) and their mixture weights ("" = equal)
    families: str = "linear"
    family_weights: str = ""
    n_dims: int = 1  # x ~ N(0, I_d)
    n_points: int = 20  # (x, f(x)) pairs per prompt
    freq_min: float = 0.5  # sinusoid frequencies drawn uniformly from [freq_min, freq_max]
    freq_max: float = 2.0
    sparsity: int = 3  # non-zero coordinates of a sparse-linear w
    eval_x_scale: float = 2.0  # the out-of-range evaluation scales x by this
    # curriculum (Garg et al.): start at d_start dims / points_start points (0 = full), grow by d_step / points_step every curriculum_every steps
    d_start: int = 0
    points_start: int = 0
    curriculum_every: int = 2000
    d_step: int = 1
    points_step: int = 2


@dataclass
class TrainConfig:
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 10
    lr_schedule: str = "constant"  # after warm-up: constant, or linear decay to 0 at `steps`
    grad_clip: float = 0.0  # max global gradient norm (0 = off)
    batch_size: int = 0  # 0 means full batch
    steps: int = 25_000
    eval_every: int = 100
    checkpoint_every: int = 100
    # Optionally denser early: every `dense_checkpoint_every` steps until `dense_until`.
    dense_checkpoint_every: int = 0
    dense_until: int = 0
    device: str = "auto"
    precision: str = "fp32"  # bf16 runs the big matmuls in bfloat16; master weights, AdamW and the loss stay fp32/fp64
    # Grokfast: add lambda x the slow part of each gradient (EMA with `alpha`, or the mean of the last `window`) before the step
    grad_filter: str = "none"
    grad_filter_alpha: float = 0.98
    grad_filter_lambda: float = 2.0
    grad_filter_window: int = 100


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        try:
            train = dict(data["train"])
            train["betas"] = tuple(train["betas"])
            task = dict(data["task"])
            if task.get("task") in tasks_where("mix"):
                task.setdefault("mix", "grammar")  # no `mix`: written before it existed, so trained on grammar-mix data
            return cls(
                model=ModelConfig(**data["model"]),
                task=TaskConfig(**task),
                train=TrainConfig(**train),
                preset=data.get("preset", ""),
            )
        except (KeyError, TypeError) as exc:
            raise UserError(f"config is not a grokking run config ({exc}); re-create the run") from None

    def set(self, key: str, raw: str) -> None:
        """Apply one `--set key=value` override, parsing `raw` to the field's type."""
        for group in (self.model, self.task, self.train):
            for f in fields(group):
                if f.name == key:
                    setattr(group, key, _parse_value(key, raw, getattr(group, key)))
                    return
        raise UserError(f"unknown config key '{key}'{_suggest(key, flat_keys())}; see `grokking presets --keys`")

    def validate(self) -> None:
        """Reject impossible configurations with a message that says how to fix them."""
        m, t, tr = self.model, self.task, self.train
        _check(m.act_fn in ACT_FNS, f"act_fn must be one of {ACT_FNS}, got '{m.act_fn}'")
        _check(m.normalization in NORMALIZATIONS, f"normalization must be one of {NORMALIZATIONS}, got '{m.normalization}'")
        _check(m.positional in POSITIONALS, f"positional must be one of {POSITIONALS}, got '{m.positional}'")
        _check(m.init in INITS, f"init must be one of {INITS}, got '{m.init}'")
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp"):
            _check(getattr(m, name) >= 1, f"{name} must be a positive integer, got {getattr(m, name)}")
        _check(0.0 <= m.dropout < 1.0, f"dropout must be in [0, 1), got {m.dropout}")
        family = family_of(t.task)
        _check(tr.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got '{tr.lr_schedule}'")
        _check(tr.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {tr.grad_clip}")
        family.resolve("check")(t, tr)
        _check(tr.steps >= 0, f"steps must be >= 0, got {tr.steps}")
        _check(tr.lr > 0, f"lr must be positive, got {tr.lr}")
        _check(tr.weight_decay >= 0, f"weight_decay must be >= 0, got {tr.weight_decay}")
        _check(len(tr.betas) == 2 and all(0 <= b < 1 for b in tr.betas), f"betas must be two numbers in [0, 1), got {tr.betas}")
        _check(tr.warmup_steps >= 0, f"warmup_steps must be >= 0, got {tr.warmup_steps}")
        _check(tr.batch_size >= 0, f"batch_size must be >= 0 (0 = full batch), got {tr.batch_size}")
        _check(tr.eval_every >= 1, f"eval_every must be >= 1, got {tr.eval_every}")
        _check(tr.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {tr.checkpoint_every}")
        _check(tr.dense_checkpoint_every >= 0 and tr.dense_until >= 0, "dense_checkpoint_every and dense_until must be >= 0")
        _check(tr.device in DEVICES, f"device must be one of {DEVICES}, got '{tr.device}'")
        _check(tr.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got '{tr.precision}'")
        _check(tr.grad_filter in GRAD_FILTERS, f"grad_filter must be one of {GRAD_FILTERS}, got '{tr.grad_filter}'")
        _check(0.0 <= tr.grad_filter_alpha < 1.0, f"grad_filter_alpha must be in [0, 1) (the paper uses 0.98), got {tr.grad_filter_alpha}")
        _check(tr.grad_filter_lambda >= 0, f"grad_filter_lambda must be >= 0 (the paper uses 2 for ema, 5 for ma), got {tr.grad_filter_lambda}")
        _check(tr.grad_filter_window >= 1, f"grad_filter_window must be >= 1 (the paper uses 100), got {tr.grad_filter_window}")


# ---- each family's checks (named by its entry in grokking/families.py) ------------------------------------


def check_modular(t: TaskConfig, tr: TrainConfig) -> None:
    _check(t.operation in OPERATIONS, f"operation must be one of {OPERATIONS}, got '{t.operation}'")
    _check(t.p >= 5 and _is_prime(t.p), f"p must be a prime >= 5, got {t.p} (try 113, 97 or 59)")
    _check(0.0 < t.frac_train < 1.0, f"frac_train must be in (0, 1), got {t.frac_train}")
    _check(t.split in SPLITS, f"split must be one of {SPLITS}, got '{t.split}'")
    _check(t.n_outputs in (0, t.p, t.p + 1), f"n_outputs must be 0 (= p), p or p + 1, got {t.n_outputs}")


def check_language(t: TaskConfig, tr: TrainConfig) -> None:
    """Minibatched sequence tasks: a batch size, evaluation examples and a known structure mix."""
    _check(tr.batch_size >= 1, "language-model tasks need a minibatch: set batch_size >= 1")
    _check(t.eval_examples >= 1, f"eval_examples must be >= 1, got {t.eval_examples}")
    _check(t.mix in MIXES, f"mix must be one of {MIXES}, got '{t.mix}'{_suggest(t.mix, list(MIXES))}")


def check_addition(t: TaskConfig, tr: TrainConfig) -> None:
    check_language(t, tr)
    _check(1 <= t.n_digits <= 9, f"n_digits must be in 1..9, got {t.n_digits}")
    _check(t.n_train >= 1, f"n_train must be >= 1, got {t.n_train}")
    _check(
        t.n_train + t.eval_examples <= 10 ** (2 * t.n_digits),
        f"n_train + eval_examples = {t.n_train + t.eval_examples} exceeds the {10 ** (2 * t.n_digits)} distinct "
        f"{t.n_digits}-digit pairs; lower them or raise n_digits",
    )


def check_icl(t: TaskConfig, tr: TrainConfig) -> None:
    check_language(t, tr)
    families = [f.strip() for f in t.families.split(",") if f.strip()]
    _check(bool(families), f"families must name at least one of {ICL_FAMILIES}")
    for name in families:
        _check(name in ICL_FAMILIES, f"unknown function family '{name}'{_suggest(name, list(ICL_FAMILIES))}; choose from {ICL_FAMILIES}")
    _check(len(set(families)) == len(families), f"families lists a family twice: '{t.families}'")
    if t.family_weights.strip():
        try:
            weights = [float(w) for w in t.family_weights.split(",")]
        except ValueError:
            raise UserError(f"family_weights must be comma-separated numbers, got '{t.family_weights}'") from None
        _check(len(weights) == len(families), f"family_weights has {len(weights)} numbers for {len(families)} families")
        _check(
            all(w >= 0 for w in weights) and sum(weights) > 0, f"family_weights must be >= 0 and sum to a positive number, got '{t.family_weights}'"
        )
    _check(t.n_dims >= 1, f"n_dims (d) must be >= 1, got {t.n_dims}")
    _check(t.n_points >= 1, f"n_points must be >= 1, got {t.n_points}")
    _check(0 < t.freq_min <= t.freq_max, f"need 0 < freq_min <= freq_max, got {t.freq_min}, {t.freq_max}")
    _check(t.sparsity >= 1, f"sparsity must be >= 1, got {t.sparsity}")
    _check(
        0 <= t.d_start <= t.n_dims and 0 <= t.points_start <= t.n_points,
        f"d_start / points_start must be in 0..n_dims / 0..n_points (0 = no curriculum), got {t.d_start} / {t.points_start}",
    )
    _check(t.curriculum_every >= 1 and t.d_step >= 0 and t.points_step >= 0, "curriculum_every must be >= 1 and d_step, points_step >= 0")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _parse_value(key: str, raw: str, current: Any) -> Any:
    try:
        if isinstance(current, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(current, int):
            return int(float(raw)) if float(raw).is_integer() else int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, tuple):
            parts = raw.strip("()[] ").split(",")
            return tuple(float(x) for x in parts)
        return raw
    except ValueError:
        raise UserError(f"cannot read '{raw}' as a value for {key} (expected {type(current).__name__})") from None


def flat_keys() -> list[str]:
    """Every key that `--set` accepts."""
    return [f.name for group in (ModelConfig, TaskConfig, TrainConfig) for f in fields(group)]


def _nanda_p113() -> RunConfig:
    return RunConfig(preset="nanda-p113")


def _quick() -> RunConfig:
    cfg = RunConfig(preset="quick")
    cfg.task.p = 59
    cfg.train.lr = 3e-3
    cfg.train.steps = 3_500
    cfg.train.eval_every = 50
    cfg.train.checkpoint_every = 50
    return cfg


def _structural(task: str, paper: bool) -> RunConfig:
    """Murty et al. 2023: post-LN causal LM, sinusoidal positions, ReLU, AdamW with warm-up and decay."""
    cfg = RunConfig(preset=f"{ {'question-formation': 'qf', 'tense-inflection': 'ti', 'dyck': 'dyck'}[task] }-{'paper' if paper else 'cpu'}")
    m, t, tr = cfg.model, cfg.task, cfg.train
    t.task, t.data_seed = task, 0
    m.normalization, m.positional, m.act_fn, m.init = "post", "sinusoidal", "relu", "tl"
    m.attn_bias = m.unembed_bias = True
    tr.lr_schedule, tr.grad_clip, tr.betas = "linear", 1.0, (0.9, 0.999)
    if paper:
        m.n_layers, m.d_model, m.n_heads, m.d_head, m.d_mlp, m.dropout = 6, 512, 8, 64, 2048, 0.1
        tr.lr, tr.weight_decay, tr.warmup_steps, tr.batch_size = 1e-4, 0.0, 10_000, 8
        tr.steps = 400_000 if task == "dyck" else 300_000
        tr.eval_every = tr.checkpoint_every = 3_000
    else:
        # Scaled down for a 2-core CPU; see docs/results/structural-cpu.md for what was tried.
        m.n_layers, m.d_model, m.n_heads, m.d_head, m.d_mlp, m.dropout = 4, 128, 4, 32, 512, 0.0
        tr.lr, tr.weight_decay, tr.warmup_steps, tr.batch_size = 1e-3, 0.1, 1_000, 64
        tr.steps, tr.eval_every, tr.checkpoint_every = 6_000, 250, 250
        t.eval_examples, t.max_len = 500, 64
        if task == "dyck":  # sequences are ~2x longer than QF/TI, so half the steps fit the same CPU time
            tr.steps = 3_000
        if task == "question-formation":  # of the configurations tried, the one whose every seed ended above its early-stopping gen
            m.n_layers, tr.steps, tr.precision = 8, 8_000, "auto"
    return cfg


def _addition_cpu() -> RunConfig:
    """n-digit addition as a causal LM, small enough to train in about a minute on one CPU core: the model
    the metric lens compares across widths and depths (`grokking metric-lens`). At d_model 64 test exact match
    passes 99% at step 500-1000 (2 seeds); at 1.5k steps widths <= 16 have not learned the carries."""
    cfg = RunConfig(preset="addition-cpu")
    m, t, tr = cfg.model, cfg.task, cfg.train
    t.task, t.data_seed, t.n_digits, t.n_train, t.eval_examples = "digit-addition", 0, 3, 10_000, 500
    m.n_layers, m.d_model, m.n_heads, m.d_head, m.d_mlp = 2, 64, 4, 16, 256
    m.normalization, m.act_fn, m.init = "pre", "gelu", "tl"
    tr.lr, tr.weight_decay, tr.betas, tr.warmup_steps, tr.lr_schedule, tr.grad_clip = 3e-3, 0.1, (0.9, 0.98), 100, "linear", 1.0
    tr.batch_size, tr.steps, tr.eval_every, tr.checkpoint_every = 64, 1_500, 100, 100
    return cfg


def _icl(paper: bool) -> RunConfig:
    """In-context functions on a linear + sinusoid mixture in d = 1 (Yadlowsky et al.'s setting): a GPT-2-like
    pre-LN decoder with a linear read-in and read-out, MSE at the x positions, fresh prompts every step."""
    cfg = RunConfig(preset="icl-paper" if paper else "icl-cpu")
    m, t, tr = cfg.model, cfg.task, cfg.train
    t.task, t.data_seed, t.families, t.n_dims, t.eval_examples = "icl-functions", 0, "linear,sinusoid", 1, 1000
    m.read_in, m.normalization, m.act_fn, m.init, m.positional = True, "pre", "gelu", "tl", "learned"
    m.attn_bias = m.unembed_bias = True
    tr.weight_decay, tr.betas, tr.grad_clip, tr.lr_schedule = 0.0, (0.9, 0.999), 1.0, "constant"
    if paper:  # Garg et al.'s standard model and schedule: 12 layers, 8 heads, width 256, 500k steps, batch 64, lr 1e-4
        m.n_layers, m.d_model, m.n_heads, m.d_head, m.d_mlp = 12, 256, 8, 32, 1024
        t.n_points = 40
        tr.lr, tr.batch_size, tr.steps, tr.warmup_steps = 1e-4, 64, 500_000, 0
        tr.eval_every, tr.checkpoint_every = 2_000, 10_000
    else:  # sized for one loaded CPU core; see docs/results/icl-functions.md for what was tried
        m.n_layers, m.d_model, m.n_heads, m.d_head, m.d_mlp = 4, 64, 4, 16, 256
        t.n_points, t.points_start, t.points_step, t.curriculum_every = 16, 4, 2, 500  # 16 points from step 3000
        tr.lr, tr.batch_size, tr.steps, tr.warmup_steps = 1e-3, 32, 5_000, 500
        tr.eval_every, tr.checkpoint_every = 500, 500
    return cfg


PRESETS: dict[str, tuple[str, Any]] = {
    "nanda-p113": ("Nanda et al. 2023: (a+b) mod 113, 30% train, 1 layer 128/4/512, AdamW wd 1.0, 25k full-batch steps", _nanda_p113),
    "qf-paper": (
        "Murty et al. 2023 question formation: 6-layer 512/8/2048 post-LN LM, 300k steps, batch 8 (GPU-sized)",
        lambda: _structural("question-formation", True),
    ),
    "ti-paper": ("Murty et al. 2023 tense inflection: as qf-paper (GPU-sized)", lambda: _structural("tense-inflection", True)),
    "dyck-paper": ("Murty et al. 2023 Dyck-(20,10): as qf-paper, 400k steps (GPU-sized)", lambda: _structural("dyck", True)),
    "qf-cpu": (
        "Question formation for a 2-core CPU: 8 layers d128, wd 0.1, lr 1e-3 decaying over 8k steps; structural grokking "
        "is rare and hangs on rounding (docs/results/structural-data.md)",
        lambda: _structural("question-formation", False),
    ),
    "ti-cpu": (
        "Tense inflection for a 2-core CPU: 4 layers d128, 6k steps; no structural grokking measured (docs/results/structural-data.md)",
        lambda: _structural("tense-inflection", False),
    ),
    "dyck-cpu": (
        "Dyck-(20,10) for a 2-core CPU: as ti-cpu, 3k steps, training strings <= 64 tokens; no delay measured between "
        "val and gen (docs/results/structural-cpu.md)",
        lambda: _structural("dyck", False),
    ),
    "addition-cpu": (
        "3-digit + 3-digit addition as a causal LM (answer least-significant digit first), 2 layers d64, 1.5k steps: "
        "the metric-lens model (docs/results/metric-lens.md)",
        _addition_cpu,
    ),
    "icl-paper": (
        "In-context functions, linear + sinusoid in d=1 (Yadlowsky et al.): 12 layers, 8 heads, width 256, 500k steps, batch 64, lr 1e-4 (GPU-sized)",
        lambda: _icl(True),
    ),
    "icl-cpu": (
        "In-context functions, linear + sinusoid in d=1, 4 layers width 64, 16 points, batch 32, 5k steps (docs/results/icl-functions.md)",
        lambda: _icl(False),
    ),
    "quick": ("Small modular addition (p=59, 30% train, lr 3e-3, 3.5k steps): groks near step 2k, minutes on a CPU", _quick),
}


def preset_config(name: str) -> RunConfig:
    """A fresh `RunConfig` for a named preset, or a `UserError` that suggests the nearest name."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'{_suggest(name, list(PRESETS))}; `grokking presets` lists them")
    return PRESETS[name][1]()


def assemble_config(
    preset: str,
    sets: Mapping[str, str] | None = None,
    *,
    seed: int | None = None,
    steps: int | None = None,
    device: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> RunConfig:
    """The validated config of one run, the same way for `grokking train`, sweeps and benchmarks: the preset,
    then the `--set` overrides, then `extra` (a sweep run's grid values), then seed, steps and device."""
    cfg = preset_config(preset)
    for key, raw in [*(sets or {}).items(), *(extra or {}).items()]:
        cfg.set(key, raw)
    if seed is not None:
        cfg.train.seed = seed
    if steps is not None:
        cfg.train.steps = steps
    if device is not None:
        cfg.set("device", device)
    cfg.validate()
    return cfg
