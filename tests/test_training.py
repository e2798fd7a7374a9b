"""The shared training loop: learning, determinism, checkpoints and resume, Ctrl-C, planning, history."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pawsight.cache import ImageCache
from pawsight.data import scan
from pawsight.errors import PawsightError
from pawsight.images import Preprocessing
from pawsight.models.scratch import build_network
from pawsight.training import (
    BatchAugment,
    TrainConfig,
    check_memory,
    fit_network,
    one_cycle,
    plan_epochs,
    predict_logits,
)

NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def tiny_arrays(tiny):
    """The tiny cats/dogs set decoded at 32 px: (X, y, X_val, y_val)."""
    ds = scan(tiny)
    prep = Preprocessing(32, "squash")
    tr = ImageCache().load_samples(ds.split("train"), prep)
    va = ImageCache().load_samples(ds.split("validation"), prep)
    return tr.images, tr.labels, va.images, va.labels


def colour_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 24 px noise pictures tinted red, green or blue: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.integers(0, 120, size=(n, 24, 24, 3)).astype(np.int32)
    X[np.arange(n), :, :, y] += 120
    return X.astype(np.uint8), y


def small_net(n_classes: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(n_classes, width=8, depth=1)


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=3e-3, seed=0, device="cpu", threads=1, verbose=False)
    return TrainConfig(**{**base, **kw})


def weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_learns_a_learnable_task_well_above_chance():
    X, y = colour_task(192, seed=1)
    Xv, yv = colour_task(60, seed=2)
    net = small_net(3)
    result = fit_network(net, X, y, Xv, yv, config=cfg(epochs=4, ema_decay=0.9), augment=BatchAugment(20),
                         normalize=NORM)
    acc = (predict_logits(net, Xv, NORM, tta=True, device="cpu").argmax(1) == yv).mean()
    assert acc > 0.8  # chance is 1/3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.epochs == 4 and result.best_epoch is not None and not result.interrupted


def test_same_seed_same_weights_on_real_photos(tiny_arrays):
    X, y, Xv, yv = tiny_arrays
    runs = []
    for _ in range(2):
        net = small_net()
        fit_network(net, X, y, Xv, yv, config=cfg(epochs=2), augment=BatchAugment(28), normalize=NORM)
        runs.append(weights(net))
    assert same(runs[0], runs[1])
    net = small_net()
    fit_network(net, X, y, Xv, yv, config=cfg(epochs=2, seed=1), augment=BatchAugment(28), normalize=NORM)
    assert not same(runs[0], weights(net))


class Crash(Exception):
    """Stands for a kill: the process dies between epochs, leaving only what is on disk."""


def test_resume_after_a_crash_continues_from_the_last_epoch_and_matches(tiny_arrays, tmp_path):
    X, y, Xv, yv = tiny_arrays
    config = cfg(epochs=4, ema_decay=0.9)
    reference = small_net()
    fit_network(reference, X, y, Xv, yv, config=config, augment=BatchAugment(28), normalize=NORM,
                run_dir=tmp_path / "a")

    def crash_at_epoch_2(epoch: int, _net) -> None:
        if epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        fit_network(small_net(), X, y, Xv, yv, config=config, augment=BatchAugment(28), normalize=NORM,
                    on_epoch_start=crash_at_epoch_2, run_dir=tmp_path / "b")
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state["state"]["epoch"] == 2

    seen: list[int] = []
    resumed = small_net(seed=123)  # a fresh network: everything must come from the checkpoint
    result = fit_network(resumed, X, y, Xv, yv, config=config, augment=BatchAugment(28), normalize=NORM,
                         on_epoch_start=lambda e, _n: seen.append(e), run_dir=tmp_path / "b")
    assert seen == [2, 3] and result.resumed_from == 2 and result.epochs == 4
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert same(weights(reference), weights(resumed))  # exactly the uninterrupted run
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    csv_lines = (tmp_path / "b" / "history.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc,lr") and len(csv_lines) == 5


def test_checkpoint_from_other_settings_or_damaged_is_refused(tiny_arrays, tmp_path):
    X, y, Xv, yv = tiny_arrays
    fit_network(small_net(), X, y, Xv, yv, config=cfg(epochs=1), augment=None, normalize=NORM,
                run_dir=tmp_path)
    with pytest.raises(PawsightError, match="different settings"):
        fit_network(small_net(), X, y, Xv, yv, config=cfg(epochs=2, lr=0.1), augment=None, normalize=NORM,
                    run_dir=tmp_path)
    (tmp_path / "checkpoint" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(PawsightError, match="damaged"):
        fit_network(small_net(), X, y, Xv, yv, config=cfg(epochs=2), augment=None, normalize=NORM,
                    run_dir=tmp_path)


def test_ctrl_c_keeps_the_best_weights_so_far(tiny_arrays, tmp_path):
    X, y, Xv, yv = tiny_arrays

    def ctrl_c_at_epoch_2(epoch: int, _net) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    net = small_net()
    result = fit_network(net, X, y, Xv, yv, config=cfg(epochs=5), augment=None, normalize=NORM,
                         on_epoch_start=ctrl_c_at_epoch_2, run_dir=tmp_path)
    assert result.interrupted and result.epochs == 2 and result.best_epoch in (1, 2)
    from safetensors.torch import load_file

    best = load_file(tmp_path / "checkpoint" / "best.safetensors")
    assert same(best, weights(net))
    logits = predict_logits(net, Xv, NORM, device="cpu")
    assert logits.shape == (len(yv), 2) and np.isfinite(logits).all()


def test_early_stopping_on_validation_loss():
    X, y = colour_task(48, seed=3)
    Xv, yv = colour_task(30, seed=4)
    yv = (yv + 1) % 3  # validation labels that contradict training: validation loss only gets worse
    result = fit_network(small_net(3), X, y, Xv, yv, config=cfg(epochs=12, patience=1, lr=1e-2), augment=None,
                         normalize=NORM)
    assert result.stopped_early and result.epochs < 12
    assert result.best_epoch == min(range(1, result.epochs + 1),
                                    key=lambda e: result.history[e - 1]["val_loss"])


def test_planner_fits_the_schedule_into_the_budget():
    # 10 steps of 1 s per epoch + 2 s validation: 12 s per epoch
    assert plan_epochs(120, 0, 1.0, 10, 2.0, done_epochs=0) == 9  # 120 * 0.97 = 116.4 s -> 9 epochs
    # after 5 steps of the first epoch (5 s elapsed): the rest of epoch 1 (7 s), then whole epochs
    assert plan_epochs(120, 5, 1.0, 10, 2.0, done_epochs=0, done_steps_in_epoch=5) == 1 + 104 // 12
    # at the end of epoch 4 with 48 s used: 68.4 s left -> 5 more
    assert plan_epochs(120, 48, 1.0, 10, 2.0, done_epochs=4) == 9
    # slower than planned: never fewer than what is done, and at least one epoch
    assert plan_epochs(120, 119, 1.0, 10, 2.0, done_epochs=6) == 6
    assert plan_epochs(1, 0, 10.0, 10, 2.0, done_epochs=0) == 1
    assert plan_epochs(1e9, 0, 1.0, 10, 0.0, done_epochs=0, max_epochs=50) == 50


def test_time_budget_sets_the_number_of_epochs(tiny_arrays):
    X, y, Xv, yv = tiny_arrays
    result = fit_network(small_net(), X, y, Xv, yv, config=cfg(epochs=None, time_budget=1e-3), augment=None,
                         normalize=NORM)
    # a spent budget: the schedule ends after the first step (one step always runs), one epoch is recorded
    assert result.planned_epochs == 1 and result.epochs == 1 and result.history[-1]["lr"] == 0.0
    result = fit_network(small_net(), X, y, Xv, yv, config=cfg(epochs=2, time_budget=1e6), augment=None,
                         normalize=NORM)
    assert result.planned_epochs == 2 and result.epochs == 2  # a generous budget: at most `epochs`


def test_one_cycle_warms_up_then_anneals_to_zero():
    lrs = [one_cycle(s / 100, 1.0, 0.25) for s in range(101)]
    assert lrs[0] == pytest.approx(0.04) and max(lrs) == pytest.approx(1.0) and lrs.index(1.0) == 25
    assert lrs[100] == 0.0 and all(a >= b for a, b in zip(lrs[25:], lrs[26:], strict=False))


def test_batch_augment_is_reproducible_and_keeps_pixels_in_range():
    x = torch.rand(6, 3, 40, 40)
    aug = BatchAugment(32)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    whole = BatchAugment(40, scale=(1, 1), ratio=(1, 1), flip=False, jitter=0)(x, torch.Generator())
    assert torch.allclose(whole, x, atol=1e-5)  # the identity crop gives the picture back


def test_memory_check_refuses_an_impossible_batch():
    with pytest.raises(PawsightError, match="--batch-size or --size"):
        check_memory(small_net(), 512, 10**6, torch.device("cpu"), torch.channels_last)
    check_memory(small_net(), 32, 16, torch.device("cpu"), torch.channels_last)  # a normal one passes
