"""The one training loop every torch model in pawsight uses (CNN from scratch, transfer fine-tuning).

    config = TrainConfig(epochs=20, batch_size=64, lr=2e-3, time_budget=600)
    result = fit_network(net, X, y, X_val, y_val, config=config, augment=BatchAugment(112),
                         normalize=(mean, std), run_dir=Path("runs/x"))
    logits = predict_logits(net, X_test, normalize=(mean, std), batch_size=128, tta=True)

Contract of `fit_network`:
- `X`, `X_val`: uint8 arrays (n, S, S, 3) straight from the decode cache. Batches are turned into float on the
  fly, so the data set is never copied as float. `y`: integer labels in [0, n_classes).
- `augment(x, generator) -> x`: whole-batch augmentation of a float batch in [0, 1], (B, 3, S, S) on the
  device, returning (B, 3, S', S') in [0, 1]; it must draw randomness only from `generator` (reproducible,
  resumable). `BatchAugment` (random resized crop + flip + colour jitter) is the default for both approaches.
  `None` = no augmentation. Normalisation `(mean, std)` (per channel, for [0, 1] pixels) is applied after it.
- `param_groups(net) -> [{"params": [...], "lr_scale": 0.1, "weight_decay": ...}, ...]`: optional, e.g. a
  lower learning rate for a pretrained backbone. Default: weight decay on conv/linear weights only.
- `on_epoch_start(epoch, net)`: optional hook, e.g. freeze the backbone for a head warm-up (frozen parameters
  get no gradient and AdamW/SGD leave them untouched).
- On return the best weights (lowest validation loss; EMA weights when `ema_decay` is set; the last epoch
  without validation data) are loaded into `net`, which is left in eval mode on its original device. The
  returned `FitResult` has the history and whether the run was interrupted (Ctrl-C) or stopped early.
- `run_dir`: the loop writes `history.csv|json` each epoch and a checkpoint in `run_dir/checkpoint/` (model,
  optimizer, EMA and best weights as safetensors; step, schedule, history and settings as JSON; no pickle).
  If a checkpoint is already there, training continues from its last completed epoch: this is how
  `pawsight train --resume RUN` works after a crash or SIGKILL. Random numbers are derived from
  (seed, epoch, rank), so without a time budget a resumed run ends with exactly the weights of an
  uninterrupted one. Under torchrun every process reads the checkpoint, so it must be on a shared path.
- Under torchrun with `on_epoch_start`, DDP looks for unused parameters (layers the hook froze).

Schedule: one-cycle (linear warm-up over `warmup_fraction` of the steps to `lr`, then linear decay to 0),
label-smoothed cross-entropy, AdamW (or SGD with Nesterov momentum), channels_last, float32 only (bf16 ran
~25x slower on the CPUs pawsight was developed on). With `time_budget`, the schedule follows the clock:
progress = seconds used / seconds available, so the learning rate reaches 0 exactly when the budget is spent
(training stops there, mid-epoch if need be), even if other programs slow the cores down midway. The first
steps are timed to plan (and show) the number of epochs; the plan is refined after every epoch. Without a
budget the schedule counts steps, and the same seed gives the same weights.

Several processes or machines: the same command runs under torchrun, e.g. on one machine

    torchrun --nproc_per_node 2 -m pawsight train DATA --approach scratch --out runs/ddp

and on two machines (run on each; the data folder and the run directory's parent must be on a shared file
system, or at least the data at the same path on both machines):

    torchrun --nnodes 2 --nproc_per_node 1 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 --rdzv-id job1 \\
        -m pawsight train DATA --approach scratch --out /shared/runs/ddp

Each process takes a seeded per-epoch permutation of the training set split by rank, with
`batch_size // world_size` pictures per step (so the recipe is the same as on one process), and gradients are
averaged by DistributedDataParallel (gloo on CPU, nccl on GPUs). Metrics are summed across processes; only
rank 0 writes files. Threads per process: OMP_NUM_THREADS if set, else cores // local processes.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from .errors import PawsightError, damaged_file_errors, shown
from .normalize import flip_average, pixels_to_float
from .normalize import normalize as normalize_pixels
from .progress import bar
from .storage import atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir

CHECKPOINT_FORMAT = 1
MAX_EPOCHS = 1000  # cap of the time-budget planner when no number of epochs is given
Normalize = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass
class TrainConfig:
    """Everything that shapes a training run; every field is JSON-serialisable (saved in the checkpoint)."""

    epochs: int | None = None          # None: 10, or as many as `time_budget` allows (then at most `epochs`)
    batch_size: int = 64               # global batch (split across processes under torchrun)
    lr: float = 2e-3                   # peak learning rate of the one-cycle schedule
    weight_decay: float = 5e-4
    optimizer: str = "adamw"           # "adamw" or "sgd" (Nesterov, momentum 0.9)
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.25      # share of the steps spent warming up the learning rate
    ema_decay: float | None = None     # e.g. 0.99: evaluate and keep an exponential moving average of weights
    time_budget: float | None = None   # seconds for the whole fit: the number of epochs is planned to fit
    patience: int | None = None        # stop when validation loss has not improved for this many epochs
    seed: int = 0
    device: str = "auto"               # "auto": cuda when available, else cpu
    tta: bool = True                   # not used by fit_network: for the caller's predict_logits
    channels_last: bool = True
    eval_batch_size: int | None = None  # default: 2 x batch_size
    threads: int | None = None  # torch threads per process; default: OMP_NUM_THREADS, or cores/processes
    verbose: bool = True               # epoch table on stderr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None      # 1-based epoch whose weights were loaded into the net
    epochs: int = 0                    # completed epochs
    planned_epochs: int = 0
    interrupted: bool = False          # Ctrl-C: the best weights so far were kept
    stopped_early: bool = False
    resumed_from: int = 0              # epochs already done when this call started
    seconds: float = 0.0               # training seconds, including earlier (resumed) sessions
    images_per_second: float = 0.0     # training throughput over all processes


# -- augmentation ----------------------------------------------------------------------------------------

class BatchAugment:
    """Random resized crop + horizontal flip + colour jitter on a whole batch, in one resampling pass.

    Every picture gets its own crop box (area fraction in `scale`, aspect ratio in `ratio`), mirrored with
    probability 1/2, resampled bilinearly to `size` x `size`; then brightness, contrast and saturation are
    each scaled by a factor in [1 - jitter, 1 + jitter]. Parameters are JSON-friendly so models can save them.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.25, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True, jitter: float = 0.2) -> None:
        self.size, self.scale, self.ratio, self.flip, self.jitter = int(size), scale, ratio, flip, jitter

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n = x.shape[0]

        def uniform(low: float, high: float) -> Tensor:
            return torch.rand(n, generator=generator) * (high - low) + low

        area = uniform(*self.scale)
        log_r = uniform(math.log(self.ratio[0]), math.log(self.ratio[1]))
        w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # fractions of the side
        h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
        cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
        cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
        flips = torch.rand(n, generator=generator) < 0.5
        sign = torch.where(flips, -1.0, 1.0) if self.flip else torch.ones(n)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
        grid = F.affine_grid(theta.to(x.device), [n, 3, self.size, self.size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.jitter:
            j = self.jitter
            b, c, s = (uniform(1 - j, 1 + j).to(x.device).view(n, 1, 1, 1) for _ in range(3))
            x = x * b
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * c + mean
            grey = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, True)
            x = ((x - grey) * s + grey).clamp_(0, 1)
        return x

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "scale": list(self.scale), "ratio": list(self.ratio), "flip": self.flip,
                "jitter": self.jitter}


# -- the loop --------------------------------------------------------------------------------------------

def fit_network(net: nn.Module, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None,
                y_val: np.ndarray | None = None, *, config: TrainConfig,
                augment: Callable[[Tensor, torch.Generator], Tensor] | None, normalize: Normalize,
                param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
                on_epoch_start: Callable[[int, nn.Module], None] | None = None,
                run_dir: Path | None = None) -> FitResult:
    """Train `net` on uint8 images; see the module docstring for the full contract."""
    dist = Distributed.from_env()
    cfg = config
    y = np.asarray(y, dtype=np.int64)
    has_val = X_val is not None and y_val is not None and len(y_val) > 0
    if len(y) < 2 * dist.world:
        raise PawsightError(f"too few training pictures ({len(y)}) to train a network")
    device = resolve_device(cfg.device, dist.local_rank)
    torch.set_num_threads(cfg.threads or default_threads(dist.local_world))
    dist.init(device)
    try:
        return _fit(net, X, y, X_val if has_val else None, np.asarray(y_val, np.int64) if has_val else None,
                    cfg, augment, normalize, param_groups, on_epoch_start, run_dir, dist, device)
    finally:
        dist.close()


def _fit(net, X, y, X_val, y_val, cfg: TrainConfig, augment, normalize, param_groups, on_epoch_start,
         run_dir: Path | None, dist: Distributed, device: torch.device) -> FitResult:
    t_start = time.perf_counter()
    out_device = next(net.parameters()).device
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net.to(device=device, memory_format=memory_format)
    mean, std = normalize  # (per-channel mean, std) for [0, 1] pixels: applied by normalize_pixels

    batch = max(1, cfg.batch_size // dist.world)
    shard = len(y) // dist.world
    batch = min(batch, shard)
    steps_per_epoch = max(1, shard // batch)
    crop = augment.size if isinstance(augment, BatchAugment) else X.shape[1]
    check_memory(net, crop, batch * dist.local_world, device, memory_format)

    groups = param_groups(net) if param_groups else default_param_groups(net, cfg.weight_decay)
    for g in groups:
        g.setdefault("lr_scale", 1.0)
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        raise PawsightError(f"unknown optimizer {cfg.optimizer!r}; use adamw or sgd")
    ema = copy.deepcopy(net).eval() if cfg.ema_decay else None
    for p in ema.parameters() if ema is not None else ():
        p.requires_grad_(False)
    model = dist.wrap(net, device, find_unused=on_epoch_start is not None)  # the hook may freeze layers
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    cap = cfg.epochs or (MAX_EPOCHS if cfg.time_budget else 10)
    planned = cap  # with a time budget: an estimate, refined after the first steps (for display)
    state = {"epoch": 0, "step": 0, "planned_epochs": planned, "seconds": 0.0, "history": [],
             "best_epoch": None, "best_val_loss": None, "bad_epochs": 0, "finished": False}
    best: dict[str, Tensor] | None = None
    ckpt = Path(run_dir) / "checkpoint" if run_dir is not None else None
    if ckpt is not None:
        loaded = load_checkpoint(ckpt, net, opt, ema, cfg, len(y))
        if loaded is not None:
            state, best = loaded
            net.to(device=device, memory_format=memory_format)
            if dist.rank == 0 and cfg.verbose:
                print(f"resuming {shown(run_dir)} after epoch {state['epoch']}", file=sys.stderr)
    result = FitResult(history=state["history"], resumed_from=state["epoch"])
    seconds_before = state["seconds"]
    timer = StepTimer()
    eval_seconds = 0.0
    interrupted = stopped = False
    if state["epoch"] == 0 and dist.rank == 0 and cfg.verbose:
        print(EpochTable.header(), file=sys.stderr)
    try:
        while state["epoch"] < cap and not state["finished"]:
            epoch = state["epoch"]
            t_epoch = time.perf_counter()
            if on_epoch_start is not None:
                on_epoch_start(epoch, net)
            model.train()
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, dist.rank, 1))
            torch.manual_seed(derive_seed(cfg.seed, epoch, dist.rank, 2))  # dropout, stochastic depth
            order = np.random.default_rng(derive_seed(cfg.seed, epoch, 0, 0)).permutation(len(y))
            order = order[dist.rank * shard:(dist.rank + 1) * shard]
            sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
            progress = bar(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{state['planned_epochs']}",
                           unit="step") if dist.rank == 0 else None
            for i in range(steps_per_epoch):
                progress_ = _progress(state["step"], cap * steps_per_epoch, cfg,
                                      seconds_before + time.perf_counter() - t_start, eval_seconds, dist)
                if progress_ >= 1 and i > 0:  # the time budget is spent: stop mid-epoch, schedule complete
                    state["finished"] = True
                    break
                lr = one_cycle(progress_, cfg.lr, cfg.warmup_fraction)
                for g in opt.param_groups:
                    g["lr"] = lr * g["lr_scale"]
                idx = np.sort(order[i * batch:(i + 1) * batch])
                xb = pixels_to_float(X[idx], device)
                if augment is not None:
                    xb = augment(xb, gen)
                xb = normalize_pixels(xb, mean, std, memory_format)
                yb = torch.from_numpy(y[idx]).to(device)
                timer.start()
                logits = model(xb)
                loss = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema is not None:
                    ema_update(ema, net, cfg.ema_decay, state["step"])
                timer.stop()
                state["step"] += 1
                correct = (logits.argmax(1) == yb).sum().item()
                sums += torch.tensor([loss.item() * len(idx), correct, len(idx)], dtype=torch.float64)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}",
                                         lr=f"{lr:.2e}")
                if cfg.time_budget and epoch == 0 and timer.steps == 5:
                    eval_seconds = eval_guess(timer, X_val, batch, dist)
                    _replan(state, cfg, timer.wall_per_step(), steps_per_epoch, eval_seconds,
                            seconds_before + time.perf_counter() - t_start, steps_in_epoch=5, dist=dist)
            if progress is not None:
                progress.close()
            train_loss, train_acc = _ratios(dist.all_reduce(sums))
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                                   "val_loss": None, "val_acc": None, "lr": lr}
            evaluator = ema if ema is not None else net
            if X_val is not None:
                t_eval = time.perf_counter()
                val_sums = _evaluate(evaluator, X_val, y_val, mean, std, cfg, dist, device, memory_format)
                row["val_loss"], row["val_acc"] = _ratios(dist.all_reduce(val_sums))
                eval_seconds = time.perf_counter() - t_eval
            state["epoch"] = epoch + 1
            row["seconds"] = round(time.perf_counter() - t_epoch, 2)
            state["history"].append(row)
            improved = row["val_loss"] is None or state["best_val_loss"] is None or \
                row["val_loss"] < state["best_val_loss"]
            if improved:
                state.update(best_epoch=epoch + 1, best_val_loss=row["val_loss"], bad_epochs=0)
                best = cpu_state(evaluator)
            else:
                state["bad_epochs"] += 1
            if cfg.patience is not None and X_val is not None and state["bad_epochs"] > cfg.patience:
                stopped = state["finished"] = True
            if cfg.time_budget and not stopped and not state["finished"]:
                elapsed = seconds_before + time.perf_counter() - t_start
                per_step = max(0.0, time.perf_counter() - t_epoch - eval_seconds) / steps_per_epoch
                _replan(state, cfg, per_step, steps_per_epoch, eval_seconds, elapsed, steps_in_epoch=0,
                        dist=dist)
                if _progress(0, 0, cfg, elapsed, eval_seconds, dist) >= 1:
                    state["finished"] = True
            if state["epoch"] >= cap:
                state["finished"] = True
            if state["finished"]:
                state["planned_epochs"] = state["epoch"]
            state["seconds"] = seconds_before + time.perf_counter() - t_start
            if dist.rank == 0:
                if cfg.verbose:
                    print(EpochTable.row(row, state["planned_epochs"]), file=sys.stderr)
                if run_dir is not None:
                    write_history(Path(run_dir), state["history"])
                    save_checkpoint(ckpt, net, opt, ema, best, state, cfg, len(y))
            dist.barrier()
    except KeyboardInterrupt:
        interrupted = True
        if dist.rank == 0 and cfg.verbose:
            print(f"\ninterrupted after {state['epoch']} completed epoch(s); keeping the best weights so far",
                  file=sys.stderr)
    if stopped and dist.rank == 0 and cfg.verbose:
        print(f"early stop: validation loss has not improved for {cfg.patience + 1} epochs", file=sys.stderr)

    if best is not None:
        net.load_state_dict(best)
    elif ema is not None and state["step"] > 0:
        net.load_state_dict(cpu_state(ema))
    net.to(device=out_device).eval()
    result.history = state["history"]
    result.best_epoch = state["best_epoch"]
    result.epochs = state["epoch"]
    result.planned_epochs = state["planned_epochs"]
    result.interrupted, result.stopped_early = interrupted, stopped
    result.seconds = seconds_before + time.perf_counter() - t_start
    if timer.steps:
        result.images_per_second = batch * dist.world * timer.steps / max(timer.total, 1e-9)
    return result


def _replan(state: dict[str, Any], cfg: TrainConfig, per_step: float, steps_per_epoch: int,
            eval_seconds: float, elapsed: float, *, steps_in_epoch: int, dist: Distributed) -> None:
    """Estimate how many epochs the time budget holds, from the measured speed (rank 0 decides for all).

    `per_step`: wall seconds per training step including data handling and augmentation.
    """
    if dist.rank == 0:
        epochs = plan_epochs(cfg.time_budget, elapsed, per_step, steps_per_epoch, eval_seconds,
                             done_epochs=state["epoch"], done_steps_in_epoch=steps_in_epoch,
                             max_epochs=cfg.epochs or MAX_EPOCHS)
    else:
        epochs = 0
    state["planned_epochs"] = int(dist.broadcast(epochs))


def plan_epochs(budget: float, elapsed: float, seconds_per_step: float, steps_per_epoch: int,
                eval_seconds_per_epoch: float, *, done_epochs: int, done_steps_in_epoch: int = 0,
                safety: float = 0.97, max_epochs: int = 1000) -> int:
    """How many epochs in total fit in `budget` seconds, given what is done and measured so far.

    The rest of the current epoch always runs; then as many whole epochs (training + validation) as fit in
    the remaining time (with a small safety margin). At least one epoch in total, at least the ones done.
    """
    remaining = budget * safety - elapsed
    epoch_cost = steps_per_epoch * seconds_per_step + eval_seconds_per_epoch
    current = done_epochs
    if done_steps_in_epoch:
        remaining -= (steps_per_epoch - done_steps_in_epoch) * seconds_per_step + eval_seconds_per_epoch
        current += 1
    more = int(remaining // epoch_cost) if epoch_cost > 0 and remaining > 0 else 0
    return int(min(max_epochs, max(1, current, current + more)))


def eval_guess(timer: StepTimer, X_val: np.ndarray | None, batch: int, dist: Distributed) -> float:
    """Seconds one validation pass will take, before any has run: forward is ~1/3 of a training step."""
    if X_val is None:
        return 0.0
    return len(X_val) / dist.world / batch * timer.wall_per_step() / 3


def one_cycle(progress: float, peak: float, warmup_fraction: float) -> float:
    """Learning rate at `progress` in [0, 1]: linear warm-up from peak/25 to `peak`, linear decay to 0."""
    if progress < warmup_fraction:
        return peak * (0.04 + 0.96 * progress / warmup_fraction)
    return peak * max(0.0, (1 - progress) / max(1e-9, 1 - warmup_fraction))


def _progress(step: int, total_steps: int, cfg: TrainConfig, elapsed: float, eval_seconds: float,
              dist: Distributed) -> float:
    """How far along the one-cycle schedule training is, in [0, 1].

    Without a time budget: steps done / steps planned (reproducible). With one, the schedule follows the
    clock (seconds used / seconds available for training, keeping time for the last validation pass), so it
    ends on time even when the speed changes (shared cores); with `epochs` too, whichever comes first.
    """
    p = step / total_steps if total_steps and (cfg.epochs or not cfg.time_budget) else 0.0
    if cfg.time_budget:
        available = max(1e-3, cfg.time_budget * 0.98 - eval_seconds)
        p = max(p, dist.broadcast(elapsed / available))  # rank 0's clock decides for every process
    return p


@torch.no_grad()
def _evaluate(net: nn.Module, X: np.ndarray, y: np.ndarray, mean: Tensor, std: Tensor, cfg: TrainConfig,
              dist: Distributed, device: torch.device, memory_format) -> Tensor:
    net.eval()
    part = np.arange(dist.rank, len(y), dist.world)
    bs = cfg.eval_batch_size or 2 * cfg.batch_size
    sums = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(part), bs):
        idx = part[i:i + bs]
        xb = normalize_pixels(pixels_to_float(X[idx], device), mean, std, memory_format)
        yb = torch.from_numpy(y[idx]).to(device)
        logits = net(xb)
        loss = F.cross_entropy(logits, yb, reduction="sum")  # no smoothing: comparable across recipes
        correct = (logits.argmax(1) == yb).sum().item()
        sums += torch.tensor([loss.item(), correct, len(idx)], dtype=torch.float64)
    return sums


def _ratios(sums: Tensor) -> tuple[float, float]:
    n = max(float(sums[2]), 1.0)
    return round(float(sums[0]) / n, 5), round(float(sums[1]) / n, 5)


# -- prediction ------------------------------------------------------------------------------------------

@torch.no_grad()
def predict_logits(net: nn.Module, X: np.ndarray, normalize: Normalize, batch_size: int = 128,
                   tta: bool = True, device: str | torch.device = "auto", channels_last: bool = True
                   ) -> np.ndarray:
    """Logits (n, n_classes) for uint8 images (n, S, S, 3); `tta` averages with the mirrored pictures."""
    dev = resolve_device(device) if isinstance(device, str) else device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net.to(device=dev, memory_format=memory_format).eval()
    out = []
    for i in range(0, len(X), batch_size):
        xb = normalize_pixels(pixels_to_float(X[i:i + batch_size], dev), *normalize, memory_format)
        out.append(flip_average(net, xb, tta).float().cpu())
    if not out:
        n_classes = getattr(net, "n_classes", 0)
        return np.zeros((0, n_classes), dtype=np.float32)
    return torch.cat(out).numpy()


# -- pieces ----------------------------------------------------------------------------------------------

def default_param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights; none on biases and normalisation parameters."""
    decay = [p for p in net.parameters() if p.ndim >= 2]
    no_decay = [p for p in net.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float, step: int) -> None:
    """Exponential moving average of the weights; short memory at first so early weights fade quickly."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), net.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - d)
    for e, b in zip(ema.buffers(), net.buffers(), strict=True):
        e.copy_(b)


def cpu_state(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}


def derive_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


def default_threads(local_processes: int = 1) -> int:
    """OMP_NUM_THREADS when set (torchrun sets it), else this machine's cores shared by its processes."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, available_cores() // local_processes)


def available_cores() -> int:
    from .system import default_workers

    return default_workers()


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PawsightError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PawsightError(f"device {device} requested but no CUDA GPU is available; use --device cpu")
    return dev


def activation_bytes(net: nn.Module, size: int, memory_format=torch.channels_last) -> int:
    """Bytes of layer outputs for one picture of `size` x `size` (what backward has to keep)."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = net.training
    device = next(net.parameters()).device
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, size, size, device=device).contiguous(memory_format=memory_format))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return total


def check_memory(net: nn.Module, size: int, batch: int, device: torch.device, memory_format) -> None:
    """Refuse, before training, a batch x image size whose activations will not fit in the free RAM."""
    if device.type != "cpu":
        return
    available = _available_ram()
    if available is None:
        return
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    need = 2.5 * activation_bytes(net, size, memory_format) * batch + 4 * params
    if need > 0.85 * available:
        raise PawsightError(f"training needs about {need / 2**30:.1f} GiB of memory for batches of {batch} "
                            f"pictures of {size} px but only {available / 2**30:.1f} GiB is free; "
                            "use a smaller --batch-size or --size")


def _available_ram() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class StepTimer:
    """Seconds per training step (forward + backward + update), and wall seconds per step incl. data."""

    def __init__(self) -> None:
        self.steps, self.total, self._t0, self._wall0, self._wall_steps = 0, 0.0, 0.0, None, 0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        if self._wall0 is None and self.steps == 1:  # skip the first step: allocations and warm-up
            self._wall0 = self._t0

    def stop(self) -> None:
        self.total += time.perf_counter() - self._t0
        self.steps += 1
        self._wall_now = time.perf_counter()

    def wall_per_step(self) -> float:
        if self._wall0 is None or self.steps < 2:
            return self.total / max(self.steps, 1)
        return (self._wall_now - self._wall0) / (self.steps - 1)


class EpochTable:
    @staticmethod
    def header() -> str:
        return "epoch  train_loss  train_acc  val_loss  val_acc        lr  seconds"

    @staticmethod
    def row(r: dict[str, Any], planned: int) -> str:
        def f(v: Any, fmt: str) -> str:
            return format(v, fmt) if v is not None else "-"

        epoch = f"{r['epoch']}/{planned}"
        return (f"{epoch:>5}  {f(r['train_loss'], '.4f'):>10}  {f(r['train_acc'], '.4f'):>9}  "
                f"{f(r['val_loss'], '.4f'):>8}  {f(r['val_acc'], '.4f'):>7}  {r['lr']:>8.2e}  "
                f"{r['seconds']:>7.1f}")


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_json(run_dir / "history.json", history, indent=1)
    buf = io.StringIO()
    fields = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())


# -- checkpoints (safetensors + JSON; no pickle) -----------------------------------------------------------

def _signature(net: nn.Module, cfg: TrainConfig, n_train: int) -> dict[str, Any]:
    """What must match for a checkpoint to be continued: the network's tensors, the recipe, the data size."""
    free = ("time_budget", "device", "threads", "verbose", "eval_batch_size", "epochs")
    recipe = {k: v for k, v in cfg.to_dict().items() if k not in free}
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    return {"recipe": recipe, "n_train": n_train, "tensors": shapes}


def save_checkpoint(ckpt: Path, net: nn.Module, opt: torch.optim.Optimizer, ema: nn.Module | None,
                    best: dict[str, Tensor] | None, state: dict[str, Any], cfg: TrainConfig,
                    n_train: int) -> None:
    """Write the checkpoint into a fresh directory, then swap it in: a kill never leaves half of one."""
    new, old = ckpt.with_name(ckpt.name + ".new"), ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    opt_tensors, opt_json = _optimizer_to_flat(opt)
    atomic_write_bytes(new / "model.safetensors", st_save(cpu_state(net)))
    atomic_write_bytes(new / "optimizer.safetensors", st_save(opt_tensors))
    if ema is not None:
        atomic_write_bytes(new / "ema.safetensors", st_save(cpu_state(ema)))
    if best is not None:
        atomic_write_bytes(new / "best.safetensors", st_save(best))
    atomic_write_json(new / "state.json", {"format": CHECKPOINT_FORMAT, "state": state, "optimizer": opt_json,
                                           "signature": _signature(net, cfg, n_train),
                                           "config": cfg.to_dict()})
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(new, ckpt)
    fsync_dir(ckpt.parent)  # the renames themselves survive a power cut, not only the files' contents
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckpt: Path, net: nn.Module, opt: torch.optim.Optimizer, ema: nn.Module | None,
                    cfg: TrainConfig, n_train: int) -> tuple[dict[str, Any], dict[str, Tensor] | None] | None:
    """Restore net/optimizer/EMA from `ckpt`; None when there is none; PawsightError when it does not fit."""
    old = ckpt.with_name(ckpt.name + ".old")
    if not (ckpt / "state.json").is_file() and (old / "state.json").is_file():
        ckpt = old  # killed between the two renames of save_checkpoint
    if not (ckpt / "state.json").is_file():
        return None
    where = ckpt.parent
    try:
        meta = json.loads((ckpt / "state.json").read_text())
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise PawsightError(f"the checkpoint in {where} has an unknown format; "
                                "train again with --overwrite")
        sig = json.loads(json.dumps(_signature(net, cfg, n_train)))
        if meta["signature"] != sig:
            diff = [k for k in sig if meta["signature"].get(k) != sig[k]]
            raise PawsightError(f"the checkpoint in {where} was made with different settings "
                                f"({', '.join(diff)}); resume with the same data and options, "
                                "or train again with --overwrite")
        net.load_state_dict(st_load((ckpt / "model.safetensors").read_bytes()))
        _optimizer_from_flat(opt, st_load((ckpt / "optimizer.safetensors").read_bytes()), meta["optimizer"])
        if ema is not None:
            ema.load_state_dict(st_load((ckpt / "ema.safetensors").read_bytes()))
        best_file = ckpt / "best.safetensors"
        best = st_load(best_file.read_bytes()) if best_file.is_file() else None
    except PawsightError:
        raise
    except damaged_file_errors() as exc:  # a damaged checkpoint reads as one sentence; bugs stay bugs
        raise PawsightError(f"the checkpoint in {where} is damaged ({type(exc).__name__}: {exc}); "
                            "train again with --overwrite") from None
    return meta["state"], best


def _optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{idx}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, Tensor],
                         meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, d in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(d)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# -- several processes -------------------------------------------------------------------------------------

@dataclass
class Distributed:
    """The torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE); one process without it."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int = 1
    owns_group: bool = False
    device: str = "cpu"  # where collective tensors live (nccl needs them on the GPU)

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(world=world, rank=int(os.environ.get("RANK", "0")),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                   local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))

    def init(self, device: torch.device) -> None:
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend=backend)
            self.owns_group = True
        self.device = str(device) if device.type == "cuda" else "cpu"

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
            self.owns_group = False

    def wrap(self, net: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
        if self.world == 1:
            return net
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=find_unused)

    def all_reduce(self, t: Tensor) -> Tensor:
        if self.world > 1:
            t = t.to(self.device, copy=True)
            torch.distributed.all_reduce(t)
            t = t.cpu()
        return t

    def broadcast(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(t, src=0)
        return float(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()
