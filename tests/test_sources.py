"""Video sources of predict (detector/sources.py): a generated video predicts frame for frame what
its decoded frames predict as images; folders mixing images and videos; an ultralytics-layout
ONNX export on a video; and one-line errors for unreadable videos, cameras and streams."""
import json
import socket
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detector.cli import main
from detector.engine.checkpoint import save_checkpoint
from detector.export import detection_difference
from detector.predict import TorchPredictor, predict_items
from detector.sources import VideoSource, VideoSourceError, collect_sources, predict_video, redact, stream_name

NAMES = ["circle", "square", "triangle"]
SIZE, FRAMES, FPS = 128, 6, 5.0


def write_video(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    """RGB frames -> an MJPG .avi (a codec every OpenCV build writes)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """The frames as OpenCV decodes them (RGB), so that codec loss is the same on both sides."""
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def as_detections(lines: list[dict]) -> list[dict]:
    return [{"boxes": torch.tensor([d["box"] for d in line["detections"]]).reshape(-1, 4),
             "scores": torch.tensor([d["score"] for d in line["detections"]]),
             "labels": torch.tensor([d["label"] for d in line["detections"]], dtype=torch.long)} for line in lines]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, calibrated_model):
    root = tmp_path_factory.mktemp("sources")
    model = calibrated_model(NAMES)
    ckpt = root / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_args": {"scale": "n", "num_classes": 3, "reg_max": 16},
                     "names": NAMES, "category_ids": [1, 2, 3], "config": {"imgsz": SIZE}}, ckpt)
    # blurred noise: the calibrated untrained net scores it 0.2-0.3 (a shapes picture saturates it at 1.0,
    # where onnxruntime and PyTorch break score ties differently)
    frames = [cv2.GaussianBlur(np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), (9, 9), 3)
              for i in range(FRAMES)]
    video = write_video(root / "clip.avi", frames)
    return {"root": root, "model": model, "ckpt": ckpt, "video": video, "decoded": decoded_frames(video)}


def cli(*args) -> None:
    """``detector predict ARGS`` in this process (SystemExit as the command exits)."""
    assert main(["predict", *args]) == 0


def test_video_predicts_what_its_decoded_frames_predict(workspace, tmp_path):
    predictor = TorchPredictor(workspace["model"])
    images, videos = collect_sources(workspace["video"])
    assert images == [] and videos == [VideoSource("video", str(workspace["video"]), "clip")]
    summary = predict_video(predictor, videos[0], tmp_path, imgsz=SIZE, conf=0.25)
    assert summary["frames"] == FRAMES == len(workspace["decoded"]) and summary["fps"] == FPS
    lines = read_jsonl(tmp_path / "clip.jsonl")
    _, records = predict_items(predictor, [(None, frame) for frame in workspace["decoded"]], None, SIZE, conf=0.25)
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [line["detections"] for line in lines] == [record["detections"] for record in records]
    assert sum(len(line["detections"]) for line in lines) > FRAMES  # something to compare
    written = cv2.VideoCapture(str(summary["video"]))
    assert summary["video"] == tmp_path / "clip.mp4" and written.get(cv2.CAP_PROP_FPS) == FPS
    assert len(decoded_frames(summary["video"])) == FRAMES
    assert decoded_frames(summary["video"])[0].shape == (SIZE, SIZE, 3)


def test_a_folder_of_images_and_videos(workspace, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_video(folder / "a.avi", workspace["decoded"][:3])
    write_video(folder / "b.avi", workspace["decoded"][3:])
    cv2.imwrite(str(folder / "still.png"), workspace["decoded"][0][..., ::-1])
    run = tmp_path / "run"
    cli(f"ckpt={workspace['ckpt']}", f"source={folder}", f"hydra.run.dir={run}", "max_frames=2")
    assert [r["file"] for r in json.loads((run / "detections.json").read_text())] == [str(folder / "still.png")]
    assert [len(read_jsonl(run / f"{name}.jsonl")) for name in ("a", "b")] == [2, 2]  # max_frames
    assert {p.name for p in run.iterdir()} >= {"a.mp4", "b.mp4", "still.jpg", "a.jsonl", "b.jsonl"}


def test_ultralytics_layout_export_predicts_a_video(workspace, tmp_path):
    """detector export layout=ultralytics, then detector predict ckpt=<that .onnx> source=<video>."""
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", f"ckpt={workspace['ckpt']}", "layout=ultralytics", f"output={onnx_file}",
                 f"hydra.run.dir={tmp_path / 'export'}", "tolerance=0.05", "latency_runs=0"]) == 0
    for name, ckpt in (("onnx", onnx_file), ("pt", workspace["ckpt"])):
        cli(f"ckpt={ckpt}", f"source={workspace['video']}", f"hydra.run.dir={tmp_path / name}", "save_images=false")
    onnx_lines, pt_lines = (read_jsonl(tmp_path / name / "clip.jsonl") for name in ("onnx", "pt"))
    assert len(onnx_lines) == len(pt_lines) == FRAMES and not (tmp_path / "onnx" / "clip.mp4").exists()
    assert [line["frame"] for line in onnx_lines] == list(range(FRAMES))
    got, expected = as_detections(onnx_lines), as_detections(pt_lines)
    assert sum(len(d["scores"]) for d in expected) > FRAMES
    assert detection_difference(expected, got) < 0.05  # px and scores, rounded as the files write them
    with pytest.raises(SystemExit, match=r"^error: the (ONNX file|exported model) takes fixed 128x128 input, "
                                         r"not imgsz=64"):
        cli(f"ckpt={onnx_file}", f"source={workspace['video']}", f"hydra.run.dir={tmp_path / 'bad'}", "imgsz=64")


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers (a stream that hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    yield server.getsockname()[1]
    server.close()


class NoModel:
    """A predictor for sources that never give a frame (calling it is a test failure)."""

    names = NAMES

    def __call__(self, *args):
        raise AssertionError("a frame was predicted")


@pytest.mark.parametrize("case", ["zero bytes", "not a video", "no frames", "camera", "refused", "silent"])
def test_bad_video_sources_are_named_errors(tmp_path, case, silent_server):
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.avi").write_text("not a video")
    cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 64)).release()
    source, timeout, message = {
        "zero bytes": (tmp_path / "zero.mp4", 10, f"video {tmp_path / 'zero.mp4'} cannot be opened: not a video"),
        "not a video": (tmp_path / "text.avi", 10, f"video {tmp_path / 'text.avi'} cannot be opened"),
        "no frames": (tmp_path / "empty.avi", 10, f"video {tmp_path / 'empty.avi'} has no frame"),
        "camera": (97, 10, "camera 97 cannot be opened (source=97: no such camera"),
        "refused": ("rtsp://127.0.0.1:9/x", 10, "stream rtsp://127.0.0.1:9/x cannot be opened within 10 s"),
        "silent": (f"rtsp://127.0.0.1:{silent_server}/live", 1,
                   f"stream rtsp://127.0.0.1:{silent_server}/live cannot be opened within 1 s"),
    }[case]
    (video,) = collect_sources(source)[1]
    start = time.monotonic()
    with pytest.raises(VideoSourceError) as error:
        predict_video(NoModel(), video, tmp_path / "run", imgsz=SIZE, timeout=timeout)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert time.monotonic() - start < 5  # the timeouts hold: nothing hangs
    assert not list((tmp_path / "run").glob("*"))  # nothing half-written left behind


def test_the_command_prints_one_error_line(workspace, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli(f"ckpt={workspace['ckpt']}", "source=rtsp://127.0.0.1:9/x", f"hydra.run.dir={tmp_path}")
    assert exit_info.value.code == ("error: stream rtsp://127.0.0.1:9/x cannot be opened within 10 s (unreachable, "
                                    "refused or not a video stream; check the URL, or raise stream_timeout)")


def test_source_names():
    assert collect_sources(0)[1] == [VideoSource("camera", 0, "camera0")]
    assert collect_sources("3")[1] == [VideoSource("camera", 3, "camera3")]
    assert collect_sources("rtsp://user:pw@cam.local:554/live/main")[1][0].name == "main"
    assert stream_name("http://10.0.0.2:8080/") == "10.0.0.2" and stream_name("rtsp://h/") == "h"
    assert redact("rtsp://user:secret@cam/x") == "rtsp://user:***@cam/x"
    assert str(VideoSource("stream", "rtsp://u:p@h/x", "x")) == "stream rtsp://u:***@h/x"
