"""Shared test fixtures. Test modules cannot import each other (pytest's importlib mode), so
shared helpers are handed out as fixtures (or live in tests/cli_runner.py and tests/reference/)."""
import pytest
import torch

from detector import build_model

# One intra-op thread, as the subprocesses of the tests get (OMP_NUM_THREADS=1): the tests' tensors are
# tiny, and with two threads on a busy 2-core machine OpenMP's waiting made a tiny model's training step
# 25x slower (4 s instead of 0.15 s, measured here with another process on each core).
torch.set_num_threads(1)

# The tests marked ``openvino`` (the OpenVINO and INT8 export tests) run in a pytest process of their own when a
# session selects other tests too. With an openvino.Core per model, the process crashed later, in unrelated tests
# (a segmentation fault; openvino 2026.4.1 beside torch 2.14); with the one Core of
# detector.export.openvino.shared_core the whole suite ran through in one process, twice. They still run apart
# because NNCF's calibration makes Cores of its own. tests/export/test_openvino_process.py runs them there (a
# session of only those tests, so they stay in it) and fails with their output if any fails.
OPENVINO_RUNNER = "test_openvino_process.py::test_the_openvino_tests_pass_in_a_process_of_their_own"
OPENVINO_ITEMS = pytest.StashKey[list]()


@pytest.hookimpl(trylast=True)  # after -k and -m deselected theirs
def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("openvino")]
    runner = any(item.nodeid.endswith(OPENVINO_RUNNER) for item in items)
    if not marked or len(marked) == len(items) or not runner:
        return  # only those tests (or the runner is not selected): they run here
    config.stash[OPENVINO_ITEMS] = [item.nodeid for item in marked]
    items[:] = [item for item in items if not item.get_closest_marker("openvino")]
    config.hook.pytest_deselected(items=marked)


@pytest.fixture
def openvino_node_ids(request):
    """The node ids of the ``openvino`` tests this session moved to a process of their own ([] if none)."""
    return request.config.stash.get(OPENVINO_ITEMS, [])


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


class RedBoxModel(torch.nn.Module):
    """A perfect 'detector' of red blocks: it boxes the red pixels of each image (position-exact)."""

    def predict(self, images, conf=0.001, iou=0.7, max_det=300):
        out = []
        for image in images:  # [3, H, W] in [0, 1]
            red = (image[0] > 0.8) & (image[1] < 0.3) & (image[2] < 0.3)
            ys, xs = torch.nonzero(red, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            out.append({"boxes": box, "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long)})
        return out


@pytest.fixture
def red_box_model():
    """A RedBoxModel: detections that are exact wherever the images hold one red block."""
    return RedBoxModel()
