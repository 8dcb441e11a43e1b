"""Shared test fixtures. Test modules cannot import each other (pytest's importlib mode), so
shared helpers are handed out as fixtures."""
import pytest
import torch

from detector import build_model


def calibrate_untrained(model):
    """Make an untrained detector behave enough like a trained one for parity tests (in place).

    A fresh BN leaves an untrained net's features near 1e-9, so every score ties and NMS
    comparisons mean nothing. Here the BN statistics come from random batches of the test sizes
    and the last layers are tamed: boxes of ~20-130 px, scores ~0.03-0.7, some above 0.25.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for height, width in ((64, 64), (96, 128), (128, 128)):
            model(torch.rand(4, 3, height, width))
        for box, cls in zip(model.head.box_branches, model.head.cls_branches):
            box[-1].weight.mul_(0.5)  # distance bins decaying from bin 0
            box[-1].bias.copy_((-0.5 * torch.arange(model.reg_max, dtype=torch.float32)).repeat(4))
            cls[-1].weight.mul_(0.5)
            cls[-1].bias.fill_(-1.5)
    return model.eval()


@pytest.fixture(scope="session")
def calibrated_model():
    """Factory: ``calibrated_model(names, seed=0)`` -> an eval-mode n model with those class names."""

    def make(names, seed: int = 0):
        torch.manual_seed(seed)
        model = calibrate_untrained(build_model("n", num_classes=len(names)))
        model.names, model.category_ids = list(names), list(range(1, len(names) + 1))
        return model

    return make
