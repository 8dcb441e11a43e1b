"""Files that declare more than they hold: each crafted file (tests/interop/crafted.py) is refused with
a CheckpointError that names the file and what it declared, before the memory it asks for is taken;
the genuine fixture still loads, with identical tensors and well inside every bound."""
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import tracemalloc
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from detector.engine.checkpoint import CheckpointError
from detector.interop import limits, load_ultralytics, restricted_load
from detector.interop.limits import LimitExceeded, check_view

# crafted file -> what its refusal says
REFUSALS = {
    "stride0_4e9_elements_over_4_bytes": r"shape \(65536, 65536\), strides \(0, 0\).* has 4294967296 elements, more "
                                         r"than the storage holds",
    "overlapping_strides_1e9_over_80k": r"has 1073741824 elements, more than the storage holds",
    "overlapping_strides_4x4_over_16": r"shape \(4, 4\), strides \(1, 1\).* has overlapping strides",
    "offset_past_the_end": r"offset 1099511627776 over a storage of 4 elements reaches element 1099511627779, past",
    "negative_stride": r"strides \(-1,\) is not a list of at most 32 non-negative integers",
    "record_declares_16GiB": r"declare 17179869184 bytes uncompressed, more than 100 x the file's \d+ bytes \+ 1 MiB "
                             r"\(a decompression bomb\)",
    "record_expands_to_2GiB": r"declare 2147483648 bytes uncompressed, more than 100 x the file's",
    "record_shorter_than_numel": r"the record archive/data/0 holds 10 bytes where its pickle declares 16",
    "record_longer_than_numel": r"the record archive/data/0 holds 16 bytes where its pickle declares 8",
    "list_copies_3GB": r"its pickle builds or copies more than 13001750 units of objects",
    "device_string_6e9_chars": r"refused torch\.device\(\[\[\[",
    "nested_tuple_key_1e9_hashes": r"a dict key or set item nests more than 256 tuple items",
    "getattr_chain_5GB_of_names": r"a pickled class path of 10035 characters \(at most 256\)",
    "data_pkl_deflated_1GB_of_sets": r"declare 1073741827 bytes uncompressed, more than 100 x the file's",
    "bytearray8_declares_4GiB": r"a bytearray of 4294967296 bytes declared in a pickle of 12",
}
# fixture variant -> what its refusal says (each before a model is built)
ULTRALYTICS_REFUSALS = {
    "nc_1e9": r"the Detect head's nc \(model\.22\.nc\) is 1000000000, not an integer in 1\.\.10000",
    "nc_string": r"the Detect head's nc \(model\.22\.nc\) is '80', not an integer",
    "nc_81_vs_80_channel_tensors": r"model\.22\.cv3\.0\.2\.weight is of shape \(80, 80, 1, 1\), but nc=81 and "
                                   r"reg_max=16 need 81 output channels",
    "reg_max_1e6": r"reg_max \(model\.22\.reg_max\) is 1000000, not an integer in 1\.\.64",
    "imgsz_string": r"train_args imgsz is '640', not an integer in 32\.\.8192",
    "width_multiple_100": r"the yaml's width_multiple is 100\.0, not a number in \(0, 4\.0\]",
    "model_without_modules": r"its pickled DetectionModel has no submodules \(_modules is None\)",
    "head_missing": r"is a DetectionModel with layers \[Conv, .*C2f\], not the YOLOv8 detection layout",
    "layer_of_wrong_type": r"with layers \[Conv, Conv, C2f, Conv, C2f, int, C2f",
    "head_dfl_missing": r"the DFL projection is not the fixed 0\.\.15 ramp",
    "module_cycle": r"its module tree loops: model\.0\.loop is a module that contains itself",
    "class_name_string_bomb": r"class name 0 is \[\[\[\[.{0,150}, not a string",
}
# Loaded from a separate process below, under an address-space cap: the files that took the most.
WORST = ("stride0_4e9_elements_over_4_bytes", "overlapping_strides_1e9_over_80k", "record_expands_to_2GiB",
         "list_copies_3GB", "device_string_6e9_chars", "getattr_chain_5GB_of_names", "data_pkl_deflated_1GB_of_sets",
         "bytearray8_declares_4GiB")


@pytest.fixture(scope="module")
def crafted_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("crafted")


def crafted_file(crafted, directory: Path, name: str, fixture: Path) -> Path:
    path = directory / f"{name}.pt"
    if not path.exists():
        if name in crafted.CRAFTED:
            crafted.CRAFTED[name](path)
        else:
            crafted.ultralytics_variant(path, fixture, name)
    return path


def test_every_crafted_file_is_listed_with_its_refusal(crafted):
    assert set(REFUSALS) == set(crafted.CRAFTED)
    assert set(ULTRALYTICS_REFUSALS) | {"version_string_bomb"} == set(crafted.ULTRALYTICS)


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_file_declaring_more_than_it_holds_is_refused_by_name(crafted, crafted_dir, ul_checkpoint, name):
    path = crafted_file(crafted, crafted_dir, name, ul_checkpoint)
    assert path.stat().st_size < 3 * crafted.MiB
    with pytest.raises(CheckpointError) as error:
        restricted_load(path)
    message = str(error.value)
    assert message.startswith(f"{path} was refused: ") and len(message) < 600, message
    assert re.search(REFUSALS[name], message), message


@pytest.mark.parametrize("name", sorted(ULTRALYTICS_REFUSALS))
def test_a_bad_header_value_or_structure_is_refused_before_a_model_is_built(crafted, crafted_dir, ul_checkpoint,
                                                                            monkeypatch, name):
    path = crafted_file(crafted, crafted_dir, name, ul_checkpoint)
    monkeypatch.setattr("detector.models.detector.build_model", lambda **_: pytest.fail("a model was built"))
    with pytest.raises(CheckpointError) as error:
        load_ultralytics(path)
    message = str(error.value)
    assert message.startswith(str(path)) and len(message) < 600, message
    assert re.search(ULTRALYTICS_REFUSALS[name], message), message


def test_a_huge_version_value_is_shown_abridged(crafted, crafted_dir, ul_checkpoint):
    _, report = load_ultralytics(crafted_file(crafted, crafted_dir, "version_string_bomb", ul_checkpoint))
    assert report["version"].startswith("[[[[") and len(report["version"]) <= 200


def torch_reference(path: Path) -> dict[str, torch.Tensor]:
    """The model's state_dict as torch.load itself reads the file: ultralytics classes become empty
    nn.Module subclasses, which torch's own BUILD fills (trusted here: the file is the fixture)."""
    class Stub(nn.Module):
        pass

    class StubUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            return type(name, (Stub,), {}) if module.startswith("ultralytics") else super().find_class(module, name)

    stub = types.SimpleNamespace(Unpickler=StubUnpickler, load=pickle.load, __name__="stub_pickle")
    return torch.load(path, pickle_module=stub, weights_only=False, map_location="cpu")["model"].state_dict()


def test_the_genuine_file_loads_as_torch_reads_it_and_well_inside_every_bound(crafted, tmp_path, ul_checkpoint):
    from detector.interop import unpickler

    archive, root, records = unpickler._open_archive(ul_checkpoint)
    with archive:
        data = records.read(f"{root}/data.pkl")
        reader = unpickler.RestrictedUnpickler(data, ul_checkpoint, records, root)
        reader.load()
    assert reader.work.spent < reader.work.limit / 10  # 3.6 units per byte of a 50-unit budget
    assert reader.tensor_bytes == reader.storage_bytes == records.total - len(data) - len(b"little")
    expected = torch_reference(ul_checkpoint)
    resaved = crafted.resave(restricted_load(ul_checkpoint), tmp_path / "resaved.pt")  # the crafting helper round-trips
    for path in (ul_checkpoint, resaved):
        tensors = restricted_load(path)["model"].tensors()
        assert list(tensors) == list(expected) and len(tensors) == 355
        assert all(tensors[k].dtype == v.dtype and torch.equal(tensors[k], v) for k, v in expected.items())


def test_too_many_records_are_refused_before_any_is_read(monkeypatch, ul_checkpoint):
    monkeypatch.setattr(limits, "MAX_RECORDS", 300)
    with pytest.raises(CheckpointError, match=re.escape(f"{ul_checkpoint} was refused: its archive has 365 records "
                                                        "(at most 300)")):
        restricted_load(ul_checkpoint)


def test_a_record_the_pickle_names_but_the_archive_lacks(crafted, tmp_path):
    data, _ = crafted.dumps({"w": crafted.Tensor(crafted.Storage("7", 1), 0, (1,), (1,))})
    path = crafted.write_checkpoint(tmp_path / "lacks.pt", data)
    with pytest.raises(CheckpointError, match=r"lacks\.pt was refused: its pickle names the record archive/data/7, "
                                              r"which the archive lacks"):
        restricted_load(path)


def test_a_lying_header_cannot_expand_past_what_it_declares(crafted, tmp_path):
    """A record declaring 16 bytes over a deflate stream of 64 MiB is read to 16 bytes and no further."""
    data, _ = crafted.dumps({"w": crafted.Tensor(crafted.Storage("0", 4), 0, (4,), (1,))})
    path = crafted.write_checkpoint(tmp_path / "liar.pt", data, {"0": crafted.Deflated(64 * crafted.MiB, declared=16)})
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"liar\.pt \(BadZipFile: Bad CRC-32"):
            restricted_load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * crafted.MiB


@pytest.mark.parametrize("size, stride, offset, available, numel", [
    ((2, 2), (3, 1), 1, 6, 4),  # arange(6).view(2, 3)[:, 1:]
    ((3, 2), (1, 3), 0, 6, 6),  # a transpose
    ((2, 3), (6, 2), 0, 12, 6),  # every other column
    ((4, 1), (1, 0), 0, 4, 4),  # a stride 0 over a dimension of 1 expands nothing
    ((0, 5), (5, 1), 0, 0, 0),  # empty
    ((), (), 3, 4, 1),  # a scalar at offset 3
])
def test_views_inside_their_storage_pass(size, stride, offset, available, numel):
    assert check_view(size, stride, offset, available) == numel


@pytest.mark.parametrize("size, stride, offset, available, says", [
    ((2, 3), (3, 1), 1, 6, "reaches element 6, past the storage's end"),
    ((3,), (0,), 0, 3, "overlapping strides"),
    ((2, 2), (1, 1), 0, 4, "overlapping strides"),
    ((4,), (1,), 3, 8, None),  # fits: 3..6
    ((5,), (1,), 4, 8, "reaches element 8"),
    ((2,), (1.0,), 0, 4, "not a list of at most 32 non-negative integers"),
    ((True,), (1,), 0, 4, "not a list"),
    ((1,) * 33, (1,) * 33, 0, 4, "not a list of at most 32"),
    ((2,), (1,), -1, 4, "at offset -1"),
    ((2,), (1, 1), 0, 4, "with strides (1, 1)"),
])
def test_views_outside_or_expanding_their_storage_are_refused(size, stride, offset, available, says):
    if says is None:
        assert check_view(size, stride, offset, available) == 4
        return
    with pytest.raises(LimitExceeded, match=re.escape(says)):
        check_view(size, stride, offset, available)


def test_the_worst_files_are_refused_under_an_address_space_cap(crafted, crafted_dir, ul_checkpoint):
    """Each worst file, in a child process capped at 1 GiB above what Python and torch already map: the
    child prints the named refusal for each and still loads the genuine file (no MemoryError, no kill)."""
    paths = [str(crafted_file(crafted, crafted_dir, name, ul_checkpoint)) for name in WORST]
    paths.append(str(crafted_file(crafted, crafted_dir, "nc_1e9", ul_checkpoint)))
    script = textwrap.dedent("""
        import json, resource, sys
        from detector.engine.checkpoint import CheckpointError
        from detector.interop import load_ultralytics
        mapped = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 30), mapped + (1 << 30)))
        for path in sys.argv[1:]:
            try:
                load_ultralytics(path)
                print(json.dumps([path, "loaded"]), flush=True)
            except CheckpointError as error:
                print(json.dumps([path, str(error)]), flush=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(["peak", peak]))
    """)
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}  # threads' arenas reserve address space
    result = subprocess.run([sys.executable, "-c", script, *paths, str(ul_checkpoint)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(json.loads(line) for line in result.stdout.splitlines())
    for name, path in zip((*WORST, "nc_1e9"), paths):
        says = REFUSALS.get(name) or ULTRALYTICS_REFUSALS[name]
        assert re.search(says, lines[path]), (name, lines[path])
    assert lines[str(ul_checkpoint)] == "loaded"


def test_a_bomb_is_refused_by_the_format_check_not_handed_to_torch_load(crafted, crafted_dir, ul_checkpoint):
    from detector.engine.checkpoint import load_checkpoint
    from detector.interop import is_ultralytics_checkpoint
    from detector.interop.limits import CheckpointTooLarge

    path = crafted_file(crafted, crafted_dir, "data_pkl_deflated_1GB_of_sets", ul_checkpoint)
    for check in (is_ultralytics_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointTooLarge, match=re.escape(f"{path} was refused: its compressed records declare")):
            check(path)
