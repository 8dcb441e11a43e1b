"""Property tests of the restricted reader: whatever the bytes, a file loads (the genuine file: to the
same tensors) or raises CheckpointError naming it; never another exception, never unbounded memory."""
import io
import zipfile

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from detector.engine.checkpoint import CheckpointError  # noqa: E402
from detector.interop import load_ultralytics, restricted_load  # noqa: E402

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# A genuine load takes ~0.3 s: these properties run fewer examples (hypothesis keeps the failing ones).
GENUINE = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def mutate(data: bytes, edits) -> bytes:
    """Apply (position, action, value) edits: overwrite a byte, insert one, delete one or flip a bit."""
    out = bytearray(data)
    for position, action, value in edits:
        position %= max(len(out), 1)
        if action == "set" and out:
            out[position] = value
        elif action == "insert":
            out.insert(position, value)
        elif action == "delete" and out:
            del out[position]
        elif out:
            out[position] ^= 1 << (value % 8)
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 30), st.sampled_from(["set", "insert", "delete", "flip"]),
                           st.integers(0, 255)), min_size=1, max_size=4)


def load_or_refuse(path):
    """restricted_load's result, or None when it raised a CheckpointError that names the file."""
    try:
        return restricted_load(path)
    except CheckpointError as error:
        assert str(path) in str(error) and len(str(error)) < 1000, str(error)
        return None


@pytest.fixture(scope="module")
def small(crafted):
    data, records = crafted.dumps(crafted.small_checkpoint())
    return data, records


@FAST
@given(data=st.binary(max_size=400))
def test_random_pickle_bytes_load_or_raise_a_checkpoint_error(crafted, small, tmp_path, data):
    load_or_refuse(crafted.write_checkpoint(tmp_path / "random.pt", data, small[1]))


@FAST
@given(edits=EDITS)
def test_a_mutated_small_pickle_loads_or_raises_a_checkpoint_error(crafted, small, tmp_path, edits):
    load_or_refuse(crafted.write_checkpoint(tmp_path / "mutated.pt", mutate(small[0], edits), small[1]))


@FAST
@given(edits=EDITS)
def test_a_mutated_small_file_loads_or_raises_a_checkpoint_error(crafted, small, tmp_path, edits):
    original = crafted.write_checkpoint(tmp_path / "small.pt", *small).read_bytes()
    path = tmp_path / "mutated_file.pt"
    path.write_bytes(mutate(original, edits))
    load_or_refuse(path)


@pytest.fixture(scope="module")
def genuine(ul_checkpoint):
    """(file bytes, offsets of its zip headers, data.pkl, records, reference tensors, reference shapes)."""
    data = ul_checkpoint.read_bytes()
    with zipfile.ZipFile(ul_checkpoint) as archive:
        infos = archive.infolist()
        records = {info.filename: archive.read(info) for info in infos}
        directory = archive.start_dir
    headers = [o for info in infos for o in range(info.header_offset, info.header_offset + 30 + len(info.filename))]
    headers += range(directory, len(data))  # the central directory and its end record
    pickle_name = next(name for name in records if name.endswith("/data.pkl"))
    tensors = restricted_load(ul_checkpoint)["model"].tensors()
    shapes = {k: v.shape for k, v in load_ultralytics(ul_checkpoint)[0].state_dict().items()}
    return data, headers, pickle_name, records, tensors, shapes


@GENUINE
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 30), st.booleans(), st.integers(0, 255)), min_size=1,
                      max_size=3))
def test_a_mutated_genuine_file_loads_the_same_tensors_or_raises(genuine, tmp_path, edits):
    data, headers, _, _, reference, _ = genuine
    out = bytearray(data)
    for position, in_header, value in edits:  # headers are where a byte changes structure rather than a CRC
        out[headers[position % len(headers)] if in_header else position % len(out)] = value
    path = tmp_path / "mutated_genuine.pt"
    path.write_bytes(bytes(out))
    loaded = load_or_refuse(path)
    if loaded is not None:
        tensors = loaded["model"].tensors()
        assert tensors.keys() == reference.keys()
        assert all(torch.equal(tensors[k], v) for k, v in reference.items())


@GENUINE
@given(edits=EDITS)
def test_a_mutated_genuine_pickle_imports_with_the_same_layout_or_raises(genuine, tmp_path, edits):
    """The pickle rewritten inside a valid zip (CRCs right): any value may change, never the layout."""
    _, _, pickle_name, records, _, shapes = genuine
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in records.items():
            archive.writestr(name, mutate(content, edits) if name == pickle_name else content)
    path = tmp_path / "mutated_pickle.pt"
    path.write_bytes(buffer.getvalue())
    try:
        model, report = load_ultralytics(path)
    except CheckpointError as error:
        assert str(path) in str(error) and len(str(error)) < 1000, str(error)
        return
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert 1 <= report["model_args"]["num_classes"] <= 10_000 and 32 <= report["imgsz"] <= 8192
