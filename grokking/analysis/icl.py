"""In-context function learning: the error measure, the baselines, the family probe and the analysis plan.

- `normalised_error`: squared error at each in-context example count k, divided by the mean squared
  target at that k (Garg et al.'s convention: the zero predictor scores 1 at every k, the truth 0).
- Baselines, each predicting y_k from the k pairs before it on the same prompts: least squares
  (minimum norm below d examples), 3-nearest neighbours, averaging (Garg's w = mean_i y_i x_i), and the
  *family fit*: least squares on the family's own basis with its non-linear parameters known (a
  sinusoid's frequency and direction; linear plus sinusoid for the combinations), the Bayes-like reference.
- `family_probe`: a ridge-regression linear probe reading the prompt's family from the residual stream
  at the last x position, trained on half of the in-mixture prompts and scored on the other half.
- `ICLPlan`: what `grokking analyze` computes per checkpoint (every evaluation set's error, probe
  accuracy per layer) and, at the final checkpoint, the full error-vs-k curves next to the baselines.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from grokking.store import write_csv
from grokking.tasks.icl_functions import Prompts, interleave, predict

FREQUENCIES = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # error-vs-frequency grid (icl-cpu trains on [0.5, 2])
PROBE_RIDGE = 1e-3
ROW_PROMPTS = 300  # prompts per set in each checkpoint's row (the final curves use all `eval_examples`)


def normalised_error(pred: Tensor, ys: Tensor) -> Tensor:
    """Per-k error [n] of predictions [b, n] of targets [b, n]: mean squared error / mean squared target."""
    return (pred - ys).pow(2).mean(0) / ys.pow(2).mean(0)


def prefix_least_squares(features: Tensor, ys: Tensor) -> Tensor:
    """Predict each y_k [b, n] by minimum-norm least squares on the k earlier (features, y) pairs; 0 at k = 0.

    In float64 so that noise-free data is fitted exactly once the features have full column rank."""
    f, y = features.double(), ys.double()
    pred = torch.zeros_like(y)
    for k in range(1, y.shape[1]):
        w = torch.linalg.pinv(f[:, :k]) @ y[:, :k, None]  # [b, m, 1]
        pred[:, k] = (f[:, k] * w[..., 0]).sum(-1)
    return pred.to(ys.dtype)


def nearest_neighbours(xs: Tensor, ys: Tensor, n_neighbours: int = 3) -> Tensor:
    """The mean y of the (up to) 3 earlier x nearest to x_k; 0 at k = 0."""
    pred = torch.zeros_like(ys)
    for k in range(1, ys.shape[1]):
        dist = (xs[:, :k] - xs[:, k : k + 1]).pow(2).sum(-1)  # [b, k]
        idx = dist.topk(min(n_neighbours, k), dim=1, largest=False).indices
        pred[:, k] = torch.gather(ys[:, :k], 1, idx).mean(1)
    return pred


def averaging(xs: Tensor, ys: Tensor) -> Tensor:
    """Garg's averaging estimator: w_k = mean_{i<k} y_i x_i, prediction x_k . w_k; 0 at k = 0."""
    sums = torch.cumsum(ys[..., None] * xs, dim=1)  # [b, n, d]: sum over i <= j
    counts = torch.arange(1, ys.shape[1] + 1, dtype=xs.dtype)[None, :, None]
    w = torch.cat([torch.zeros_like(sums[:, :1]), (sums / counts)[:, :-1]], dim=1)  # over i < k
    return (xs * w).sum(-1)


def baseline_predictions(prompts: Prompts) -> dict[str, Tensor]:
    """Every baseline's predictions [b, n] on `prompts`."""
    return {
        "least squares": prefix_least_squares(prompts.xs, prompts.ys),
        "3-nearest neighbours": nearest_neighbours(prompts.xs, prompts.ys),
        "averaging": averaging(prompts.xs, prompts.ys),
        "family fit": prefix_least_squares(prompts.basis, prompts.ys),
    }


@torch.no_grad()
def model_predictions(model: torch.nn.Module, prompts: Prompts, batch_size: int = 500) -> Tensor:
    return torch.cat([predict(model, prompts.xs[s : s + batch_size], prompts.ys[s : s + batch_size]) for s in range(0, len(prompts.ys), batch_size)])


@torch.no_grad()
def family_probe(model, prompts: Prompts, ridge: float = PROBE_RIDGE) -> list[float]:
    """Held-out accuracy of a linear probe for the family at the last x position, after each block [n_layers].

    Ridge regression onto one-hot family labels (with a bias), fitted on even prompts, scored on odd ones."""
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(interleave(prompts.xs, prompts.ys), names_filter=lambda n: n in names)
    labels = prompts.family
    onehot = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).double()
    fit, held = torch.arange(len(labels)) % 2 == 0, torch.arange(len(labels)) % 2 == 1
    accuracies = []
    for name in names:
        feats = cache[name][:, -2].double()  # the last x position
        feats = torch.cat([(feats - feats[fit].mean(0)) / (feats[fit].std(0) + 1e-8), torch.ones(len(feats), 1, dtype=feats.dtype)], 1)
        a = feats[fit]
        w = torch.linalg.solve(a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype), a.T @ onehot[fit])
        accuracies.append(((feats[held] @ w).argmax(1) == labels[held]).double().mean().item())
    return accuracies


class ICLPlan:
    """`grokking analyze` for icl-functions runs: per-checkpoint errors and probe, final curves with baselines."""

    def __init__(self, run, final_step: int, sample: int, sample_seed: int):
        """The registry's plan signature (grokking/families.py); the evaluation prompts are the task's own fixed
        sets and `finish` reads the last good step, so only `run` is used."""
        self.run, self.task = run, run.task
        self.sets = self.task.eval_sets(FREQUENCIES if "sinusoid" in self.task.families else ())
        # Every checkpoint: the mixture's families, the combinations and scaled inputs on ROW_PROMPTS prompts each;
        # the frequency grid only at the final checkpoint (`finish`), which keeps a checkpoint to seconds.
        self.tracked = {name: prompts.head(ROW_PROMPTS) for name, prompts in self.sets.items() if " f=" not in name}
        self.mixture = self.task.mixture_set()
        self.signature = {"kind": "icl-functions", "sets": list(self.sets), "eval_examples": self.task.eval_examples, "row_prompts": ROW_PROMPTS}

    def row(self, step: int) -> tuple[dict[str, float], list[dict]]:
        model = self.run.model(step)
        row: dict[str, float] = {"step": step}
        for name, prompts in self.tracked.items():
            err = normalised_error(model_predictions(model, prompts), prompts.ys)
            row[f"err {name}"], row[f"last {name}"] = err.mean().item(), err[-1].item()
        if len(self.task.families) > 1:
            for layer, acc in enumerate(family_probe(model, self.mixture)):
                row[f"probe L{layer}"] = acc
        return row, []

    def finish(self, table: pd.DataFrame, good_steps: list[int]) -> dict:
        """Write icl_curves.csv (error vs k for the final model and every baseline on every set); summarise the last k."""
        model = self.run.model(good_steps[-1])
        rows, last = [], {}
        for name, prompts in self.sets.items():
            preds = {"model": model_predictions(model, prompts), **baseline_predictions(prompts)}
            last[name] = {}
            for predictor, pred in preds.items():
                err = normalised_error(pred, prompts.ys)
                rows += [{"set": name, "predictor": predictor, "k": k, "error": float(e)} for k, e in enumerate(err.tolist())]
                last[name][predictor] = float(err[-1])
        write_csv(self.run.dir.icl_curves_path, pd.DataFrame(rows))
        return {"final_step": good_steps[-1], "error_at_last_k": last}
