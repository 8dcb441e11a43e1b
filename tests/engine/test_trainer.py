"""Trainer fault handling: non-finite losses are skipped, several in a row stop the run."""
import pytest
import torch
from omegaconf import OmegaConf

from detector.engine.trainer import NonFiniteLossError, TrainState, amp_dtype, handle_nonfinite


def test_nonfinite_losses_are_counted_and_stop_the_run_with_advice(caplog):
    cfg = OmegaConf.create({"max_nonfinite_steps": 3})
    state = TrainState()
    losses = {"loss_cls": torch.tensor(float("nan")), "loss": torch.tensor(float("nan"))}
    handle_nonfinite(cfg, state, losses, iteration=5)
    handle_nonfinite(cfg, state, losses, iteration=6)
    assert state.nonfinite_in_row == 2 and "non-finite loss at iteration 6" in caplog.text
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row.*optim.lr.*amp=false.*labels"):
        handle_nonfinite(cfg, state, losses, iteration=7)


def test_amp_is_off_on_cpu_and_when_disabled():
    assert amp_dtype(torch.device("cpu"), True) is None
    assert amp_dtype(torch.device("cuda"), False) is None
