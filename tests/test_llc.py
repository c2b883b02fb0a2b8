"""The LLC through devinterp: a known ordering on a toy with unused units, reproducibility, and the incremental pass."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from grokking.analysis import llc as llc_mod
from grokking.analysis.llc import LLCRequest, SGLDSettings, estimate_llc, select_steps
from grokking.errors import UserError

needs_devinterp = pytest.mark.skipif(importlib.util.find_spec("devinterp") is None, reason="needs the optional extra: pip install 'grokking[llc]'")

# nbeta = n / ln n for the toy's 1024 examples (Lau et al.), so the loss, not the localization, confines the
# chains; with this step the mean loss traces level off within ~10 of the 100 draws (measured).
TOY_SGLD = SGLDSettings(lr=1e-3, localization=1.0, nbeta=148.0, chains=2, draws=100, batch_size=64, seed=0)


def relu_net(n_used: int, hidden: int = 16, d_in: int = 4, seed: int = 0) -> nn.Sequential:
    """A 2-layer ReLU net whose hidden units after the first `n_used` have zero outgoing weights (they cannot
    affect the output). Every incoming bias is positive, so every unit is active on part of the data."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    with torch.no_grad():
        net[0].bias.uniform_(0.2, 0.5)
        net[2].weight.normal_(0, 1.0)
        net[2].weight[:, n_used:] = 0
    return net


def regression_loss(teacher: nn.Module, n: int = 1024, d_in: int = 4):
    """The Gaussian negative log-likelihood (half squared error) of data the teacher itself labels: the teacher
    sits at a global minimum (loss 0), as the LLC's definition requires."""
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = teacher(x)

    def loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((model(x[idx]) - y[idx]) ** 2).mean()

    return loss, n


def toy_llc(n_used: int, settings: SGLDSettings = TOY_SGLD) -> llc_mod.LLCEstimate:
    net = relu_net(n_used)
    loss, n = regression_loss(net)
    return estimate_llc(net, loss, n, settings)


@needs_devinterp
def test_unused_hidden_units_lower_the_llc() -> None:
    # Theory: each unit that carries signal adds up to (d_in + 2)/2 = 3 to the learning coefficient (its incoming
    # weights, bias and outgoing weight are identified); a unit with zero outgoing weight adds only 1/2 (its
    # incoming weights are free while the outgoing weight is 0). 2 used of 16: about 0.5 + 2*3 + 14*0.5 = 13.5;
    # 16 used: up to 0.5 + 16*3 = 48.5, a ratio of ~3.6. Short chains underestimate both (measured here: 5.6 +- 0.5
    # against 14.3 +- 0.8, a ratio of 2.5); asking for 1.8 leaves room for other machines' rounding.
    sparse, dense = toy_llc(n_used=2), toy_llc(n_used=16)
    assert sparse.mean > 0 and dense.mean > 0
    assert dense.mean > 1.8 * sparse.mean, (sparse.mean, dense.mean)
    assert dense.mean - dense.std > sparse.mean + sparse.std


@needs_devinterp
def test_llc_is_reproducible_for_a_fixed_seed() -> None:
    few = SGLDSettings(lr=1e-3, localization=100.0, chains=2, draws=30, batch_size=32, seed=3)
    first, again = toy_llc(4, few), toy_llc(4, few)
    # The same computation on the same machine and thread count: bitwise equal.
    assert first.mean == again.mean and (first.loss_trace == again.loss_trace).all()
    other = toy_llc(4, SGLDSettings(**{**few.__dict__, "seed": 4}))
    assert other.mean != first.mean, "another seed draws other noise"


@needs_devinterp
def test_estimate_leaves_the_model_unchanged() -> None:
    net = relu_net(4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss, n = regression_loss(net)
    estimate_llc(net, loss, n, SGLDSettings(lr=1e-3, localization=100.0, chains=1, draws=5, batch_size=32))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_select_steps_every_and_sample() -> None:
    steps = list(range(0, 110, 10))  # 11 checkpoints
    assert select_steps(steps) == steps
    assert select_steps(steps, every=3) == [10, 40, 70, 100]  # counted back from the final checkpoint
    assert select_steps(steps, sample=3) == [0, 50, 100]
    assert select_steps(steps, sample=2, every=5) == [0, 100]
    with pytest.raises(UserError, match="--llc-every"):
        select_steps(steps, every=0)


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="--llc-chains"):
        SGLDSettings(chains=0).validate()
    with pytest.raises(UserError, match="--llc-nbeta"):
        SGLDSettings(nbeta=-1.0).validate()
    assert SGLDSettings(batch_size=64).resolved_nbeta == pytest.approx(64 / 4.1588830833596715)


def test_missing_devinterp_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "devinterp.slt.llc", None)  # makes `import devinterp.slt.llc` fail
    with pytest.raises(UserError, match=r"pip install 'grokking\[llc\]'"):
        LLCRequest().validate()


def test_cli_defaults_are_the_settings_defaults() -> None:
    import typer.main

    from grokking.cli import app

    params = {p.name: p.default for p in typer.main.get_command(app).commands["analyze"].params}
    defaults = SGLDSettings()
    for field in ("lr", "localization", "nbeta", "chains", "draws", "batch_size", "seed"):
        assert params[f"llc_{field}"] == getattr(defaults, field), field


@needs_devinterp
def test_analyze_llc_is_incremental(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from grokking.analysis import progress
    from grokking.train import train

    from conftest import tiny_config

    train(tiny_config(), tmp_path / "run", progress=False)
    request = LLCRequest(SGLDSettings(lr=1e-5, localization=1000.0, chains=2, draws=10, batch_size=32), sample=2)
    table = progress.analyze(tmp_path / "run", progress=False, llc=request)
    llc_table = pd.read_csv(tmp_path / "run" / "llc.csv")
    assert llc_table.step.tolist() == [0, 60] and table.llc_mean.notna().sum() == 2
    assert set(table.columns) >= {"llc_mean", "llc_std", "test_loss"}

    calls: list[int] = []
    original = llc_mod.estimate_llc
    monkeypatch.setattr(llc_mod, "estimate_llc", lambda *a, **k: calls.append(1) or original(*a, **k))
    progress.analyze(tmp_path / "run", progress=False, llc=LLCRequest(request.settings, sample=3))
    assert len(calls) == 1, "only the new middle checkpoint is estimated"
    progress.analyze(tmp_path / "run", progress=False, llc=LLCRequest(request.settings, sample=3))
    assert len(calls) == 1, "nothing left to estimate"
    other = LLCRequest(SGLDSettings(**{**request.settings.__dict__, "seed": 1}), sample=3)
    progress.analyze(tmp_path / "run", progress=False, llc=other)
    assert len(calls) == 4, "other settings start the table over"
    assert json.loads((tmp_path / "run" / "llc.json").read_text())["signature"]["sgld"]["seed"] == 1

    from grokking.reports.llc import run_llc_figure

    fig = run_llc_figure(tmp_path / "run")
    assert list(fig.data[0].x) == pd.read_csv(tmp_path / "run" / "llc.csv").step.tolist()


@needs_devinterp
def test_calibration_writes_one_row_per_setting_and_every_trace(tmp_path: Path) -> None:
    from grokking.reports.llc import write_calibration_page
    from grokking.run import load_run
    from grokking.train import train

    from conftest import tiny_config

    train(tiny_config(steps="20"), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    table, estimates = llc_mod.calibrate(run, 20, [1e-5], [1000.0, 10000.0], SGLDSettings(chains=2, draws=8, batch_size=16), progress=False)
    traces = llc_mod.calibration_tables(estimates)
    assert table[["lr", "localization"]].values.tolist() == [[1e-5, 1000.0], [1e-5, 10000.0]]
    assert len(traces) == 2 * 2 * 8 and set(traces.chain) == {0, 1}
    table.to_csv(run.dir.llc_calibration_path, index=False)
    traces.to_csv(run.dir.llc_calibration_traces_path, index=False)
    assert "loss trace per chain" in write_calibration_page(run.path, 20).read_text().lower()


def test_cli_without_devinterp_prints_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from grokking.cli import main

    monkeypatch.setitem(sys.modules, "devinterp.slt.llc", None)
    monkeypatch.setattr(sys, "argv", ["grokking", "analyze", str(tmp_path), "--measures", "llc"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: " + llc_mod.INSTALL_HINT]
