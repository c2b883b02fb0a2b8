"""`grokking import`: the paper's layout and run files convert exactly, its split is rebuilt, unsafe or broken files are refused."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from safetensors.torch import save_file

from grokking import load_run
from grokking.analysis.progress import analyze
from grokking.errors import UserError
from grokking.importers import import_run
from grokking.model import Transformer, checkpoint_tensors
from grokking.tasks.registry import build_task, sized

from conftest import tiny_config

P = 23
EPOCHS = [0, 100, 200, 300]
PAPER_CONFIG = {"p": P, "frac_train": 0.4, "seed": 7, "fn_name": "add", "lr": 1e-3, "weight_decay": 1.0, "save_every": 100}


def make_model(seed: int, n_outputs: int) -> Transformer:
    cfg = tiny_config(n_outputs=str(n_outputs))
    cfg = sized(cfg, build_task(cfg))
    torch.manual_seed(seed)
    return Transformer(cfg.model).eval()


def to_nanda(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our TL layout -> the paper's (the inverse of what the importer does), with its mask buffer and no zero biases."""
    out = {}
    for key, value in tensors.items():
        name = key.rsplit(".", 1)[-1]
        if name in ("b_Q", "b_K", "b_V", "b_O", "b_U"):
            continue
        if name in ("W_Q", "W_K", "W_V"):
            value = value.transpose(-1, -2)
        elif name == "W_O":
            value = rearrange(value, "h e d -> d (h e)")
        elif name in ("W_E", "W_in", "W_out"):
            value = value.T
        out[key] = value.clone().contiguous()
    out["blocks.0.attn.mask"] = torch.ones(3, 3).tril()
    return out


def nanda_logits(sd: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """The paper's forward pass written against its own layout: checks `to_nanda` independently of the importer."""
    a = "blocks.0.attn."
    d_head = sd[a + "W_Q"].shape[1]
    x = rearrange(sd["embed.W_E"][:, tokens], "d b p -> b p d") + sd["pos_embed.W_pos"]
    q, k, v = (einsum(sd[a + w], x, "i h d, b p d -> b i p h") for w in ("W_Q", "W_K", "W_V"))
    scores = einsum(k, q, "b i p h, b i q h -> b i q p").masked_fill(sd[a + "mask"] == 0, -1e10)
    z = einsum(v, F.softmax(scores / math.sqrt(d_head), dim=-1), "b i p h, b i q p -> b i q h")
    x = x + einsum(sd[a + "W_O"], rearrange(z, "b i q h -> b q (i h)"), "d f, b q f -> b q d")
    pre = einsum(sd["blocks.0.mlp.W_in"], x, "m d, b p d -> b p m") + sd["blocks.0.mlp.b_in"]
    x = x + einsum(sd["blocks.0.mlp.W_out"], F.relu(pre), "d m, b p m -> b p d") + sd["blocks.0.mlp.b_out"]
    return x @ sd["unembed.W_U"]


@pytest.fixture(scope="module")
def paper_run() -> tuple[list[Transformer], list[dict[str, torch.Tensor]]]:
    models = [make_model(seed, P + 1) for seed in range(len(EPOCHS))]
    return models, [to_nanda(checkpoint_tensors(m)) for m in models]


def run_file(layout: str, states: list[dict[str, torch.Tensor]]) -> object:
    """The same run in each container layout the importer accepts."""
    if layout == "checkpoints":
        return {
            "model": states[-1],
            "checkpoints": states,
            "checkpoint_epochs": EPOCHS,
            "config": PAPER_CONFIG,
            "train_losses": [1.0] * 301,
            "test_losses": [2.0] * 301,
        }
    if layout == "state_dicts":
        return {"model": states[-1], "state_dicts": states, "config": PAPER_CONFIG}
    if layout == "pairs":
        return list(zip(EPOCHS, states))
    return dict(zip(EPOCHS, states))


def test_paper_layout_matches_the_papers_forward(paper_run) -> None:
    models, states = paper_run
    tokens = build_task(tiny_config()).tokens
    for model, state in zip(models, states):
        torch.testing.assert_close(nanda_logits(state, tokens), model(tokens), atol=1e-5, rtol=0)


def test_paper_run_imports_exactly_with_the_papers_split(tmp_path: Path, paper_run) -> None:
    models, states = paper_run
    path = tmp_path / "full_run.pth"
    torch.save(run_file("checkpoints", states), path)
    run = load_run(import_run(path, "nanda", tmp_path / "run", progress=False))

    t = run.config.task
    assert (t.p, t.frac_train, t.data_seed, t.split, t.n_outputs, run.config.preset) == (P, 0.4, 7, "python-shuffle", P + 1, "imported")
    assert run.steps == EPOCHS
    tokens = run.task.tokens
    for step, model in zip(EPOCHS, models):
        torch.testing.assert_close(run.model(step)(tokens), model(tokens), atol=1e-6, rtol=0)

    pairs = [(a, b) for a in range(P) for b in range(P)]
    random.seed(7)
    random.shuffle(pairs)
    assert set(run.task.train_idx.tolist()) == {a * P + b for a, b in pairs[: int(0.4 * P * P)]}

    metrics = run.metrics
    assert metrics.step.tolist() == EPOCHS and metrics[["train_acc", "test_acc"]].stack().between(0, 1).all()
    table = analyze(run.path, progress=False)
    assert table.step.tolist() == EPOCHS and table.restricted_loss.notna().all()


@pytest.mark.parametrize("layout", ["state_dicts", "pairs", "epoch_dict"])
def test_every_run_container_gives_the_same_steps(tmp_path: Path, paper_run, layout: str) -> None:
    _, states = paper_run
    path = tmp_path / "run.pth"
    torch.save(run_file(layout, states), path)
    run = load_run(import_run(path, "nanda", tmp_path / "run", p=P, progress=False))
    assert run.steps == EPOCHS
    torch.testing.assert_close(run.weights(300)["embed.W_E"], states[-1]["embed.W_E"].T)


def test_tl_single_model_round_trips(tmp_path: Path) -> None:
    model = make_model(11, 0)
    tensors = {k: v for k, v in checkpoint_tensors(model).items() if ".b_" not in k or ".mlp." in k}  # missing biases -> zeros
    tensors |= {"blocks.0.attn.IGNORE": torch.tensor(-1e5), "blocks.0.attn.mask": torch.ones(3, 3, dtype=torch.bool).tril()}
    path = tmp_path / "model.pth"
    torch.save(tensors, path)
    run = load_run(import_run(path, "tl", tmp_path / "run", p=P, progress=False))
    assert run.steps == [0] and run.config.task.split == "seeded" and run.config.task.n_outputs == 0
    torch.testing.assert_close(run.model()(run.task.tokens), model(run.task.tokens), atol=1e-6, rtol=0)


def test_our_safetensors_checkpoint_keeps_its_step(tmp_path: Path) -> None:
    path = tmp_path / "step.safetensors"
    save_file({k: v.contiguous() for k, v in checkpoint_tensors(make_model(3, 0)).items()}, path, metadata={"step": "1500"})
    assert load_run(import_run(path, "tl", tmp_path / "run", p=P, progress=False)).steps == [1500]


def _pwned(marker: str) -> None:
    Path(marker).write_text("code ran")


class Exploit:
    def __reduce__(self):
        return (_pwned, (self.marker,))

    def __init__(self, marker: str):
        self.marker = marker


def test_pickled_code_is_refused_without_running(tmp_path: Path, paper_run) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": paper_run[1][0], "config": Exploit(str(marker))}, path)
    with pytest.raises(UserError, match="evil.pth holds Python objects"):
        import_run(path, "nanda", tmp_path / "run", progress=False)
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_named(tmp_path: Path, paper_run, suffix: str) -> None:
    path = tmp_path / f"run{suffix}"
    if suffix == ".pth":
        torch.save(run_file("checkpoints", paper_run[1]), path)
    else:
        save_file(paper_run[1][0], path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=f"{path.name} is corrupt or truncated"):
        import_run(path, "nanda", tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_shape_mismatch_names_the_key_and_leaves_nothing(tmp_path: Path, paper_run) -> None:
    states = [dict(s) for s in paper_run[1]]
    states[2]["blocks.0.mlp.b_in"] = torch.zeros(7)
    path = tmp_path / "run.pth"
    torch.save(run_file("checkpoints", states), path)
    with pytest.raises(UserError, match="'blocks.0.mlp.b_in' has shape \\[7\\]"):
        import_run(path, "nanda", tmp_path / "run", progress=False)
    assert list(tmp_path.iterdir()) == [path]


def test_arguments_may_not_contradict_the_saved_config(tmp_path: Path, paper_run) -> None:
    path = tmp_path / "run.pth"
    torch.save(run_file("checkpoints", paper_run[1]), path)
    with pytest.raises(UserError, match="config has seed=7"):
        import_run(path, "nanda", tmp_path / "run", data_seed=3, progress=False)


def test_recorded_split_must_match_the_rebuilt_one(tmp_path: Path, paper_run) -> None:
    path = tmp_path / "run.pth"
    torch.save(run_file("checkpoints", paper_run[1]) | {"train_indices": torch.arange(211)}, path)
    with pytest.raises(UserError, match="train_indices differ"):
        import_run(path, "nanda", tmp_path / "run", progress=False)


def test_existing_run_directory_is_not_overwritten(tmp_path: Path, paper_run) -> None:
    path = tmp_path / "run.pth"
    torch.save(run_file("checkpoints", paper_run[1]), path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(UserError, match="already exists"):
        import_run(path, "nanda", out, progress=False)
    assert [f.name for f in out.iterdir()] == ["config.json"]
