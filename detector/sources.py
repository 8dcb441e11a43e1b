"""Predict sources beyond image files: video files, folders or globs holding videos (beside
images), camera indices and stream URLs (RTSP, RTMP, HTTP(S), ...), read frame by frame with
OpenCV's ``cv2.VideoCapture`` (the optional extra ``video``; albumentations already installs it).

    images, videos = collect_sources("clips/")       # image files, VideoSource list
    summary = predict_video(predictor, videos[0], "runs/out", imgsz=640)

Each video source writes, into the run folder,
    <name>.mp4     the frames with labelled boxes, at the source's size and fps (mp4v; MJPG .avi
                   where this OpenCV cannot write mp4), unless ``save_video=False``
    <name>.jsonl   one line per frame: {"frame": i (0-based), "detections": [...]}, the detections
                   in the format of detections.json (detector.predict): box xyxy original px,
                   score, label, name
A camera or stream runs until it ends, ``max_frames`` or Ctrl-C; the files written so far are
complete either way. A source that cannot be read (not a video, no frame, no such camera, a URL
that does not answer within ``timeout`` seconds) raises ``VideoSourceError`` naming it: a
``SourceError`` (ValueError), which the command prints as one ``error:`` line.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.predict import (
    IMAGE_SUFFIXES,
    SourceError,
    detection_record,
    draw,
    predict_image,
    unique_stem,
)

log = logging.getLogger("detector")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
                  ".3gp")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")
DEFAULT_FPS = 30.0  # written for cameras and streams that do not say theirs


class VideoSourceError(SourceError):
    """A video file, camera or stream that cannot be opened or gives no frame."""


@dataclass(frozen=True)
class VideoSource:
    """One video input: ``kind`` "video" (a file), "camera" (an index) or "stream" (a URL)."""

    kind: str
    target: str | int
    name: str  # the stem of its output files

    def __str__(self) -> str:
        return {"video": "video", "camera": "camera", "stream": "stream"}[self.kind] + f" {redact(self.target)}"


def redact(target: str | int) -> str:
    """A URL with its password hidden (rtsp://user:secret@host -> rtsp://user:***@host)."""
    return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", str(target))


def is_stream_url(text: str) -> bool:
    return re.match(rf"^({'|'.join(STREAM_SCHEMES)})://", text.strip(), re.IGNORECASE) is not None


def is_camera_index(source) -> bool:
    if isinstance(source, bool):
        return False
    return isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()
                                       and not Path(source).exists())


def stream_name(url: str) -> str:
    """A file stem for a stream: the last path part of its URL, else its host (``stream`` if neither)."""
    rest = re.sub(r"^[a-z0-9+.-]+://", "", url.strip(), flags=re.IGNORECASE).split("?")[0]
    rest = rest.split("@")[-1]
    parts = [p for p in rest.split("/") if p]
    stem = Path(parts[-1]).stem if len(parts) > 1 else (parts[0].split(":")[0] if parts else "")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "stream"


def collect_sources(source) -> tuple[list[Path], list[VideoSource]]:
    """(image files, video sources) of ``source``: a camera index (``0``), a stream URL, an image
    or video file, a folder (its images and videos, not recursive) or a glob pattern; sorted by path.
    Raises SourceError when it names nothing, or nothing readable."""
    if is_camera_index(source):
        index = int(source)
        return [], [VideoSource("camera", index, f"camera{index}")]
    source = str(source)
    if is_stream_url(source):
        return [], [VideoSource("stream", source.strip(), stream_name(source))]
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return [], [VideoSource("video", str(path), path.stem)]
        return [path], []
    if path.is_dir():
        files, what = sorted(p for p in path.iterdir() if p.is_file()), f"folder {source}"
    elif glob.has_magic(source):
        files, what = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file()), \
            f"pattern {source}"
    else:
        raise SourceError(f"source not found: {source} (give an image, a video, a folder, a glob pattern, a camera "
                          "index or a stream URL)")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    videos = [VideoSource("video", str(p), p.stem) for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    if not images and not videos:
        raise SourceError(f"no image in {what} (looked for {', '.join(IMAGE_SUFFIXES)}) and no video "
                          f"({', '.join(VIDEO_SUFFIXES)})")
    return images, videos


# ------------------------------------------------------------------------------------------ OpenCV
def require_cv2():
    try:
        import cv2
    except ImportError:
        raise VideoSourceError("video, camera and stream sources need OpenCV: pip install 'detector[video]' "
                               "(opencv-python-headless)") from None
    return cv2


@contextlib.contextmanager
def quiet_opencv(cv2):
    """OpenCV's own warnings off while opening (a failed open is reported by us, in one line)."""
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is None:
        yield
        return
    previous = logging_api.getLogLevel()
    logging_api.setLogLevel(logging_api.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging_api.setLogLevel(previous)


def open_capture(source: VideoSource, timeout: float = 10.0):
    """An opened ``cv2.VideoCapture``, or VideoSourceError naming the source and why.

    Streams go through FFmpeg with open and read timeouts of ``timeout`` seconds, so a URL that
    never answers fails in that time instead of hanging."""
    cv2 = require_cv2()
    milliseconds = int(max(timeout, 0.1) * 1000)
    with quiet_opencv(cv2):
        if source.kind == "camera":
            capture = cv2.VideoCapture(int(source.target))
        elif source.kind == "stream":
            capture = cv2.VideoCapture(source.target, cv2.CAP_FFMPEG, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, milliseconds, cv2.CAP_PROP_READ_TIMEOUT_MSEC, milliseconds])
        else:
            if not Path(source.target).is_file():
                raise VideoSourceError(f"video not found: {source.target}")
            capture = cv2.VideoCapture(str(source.target))
    if capture.isOpened():
        return capture
    capture.release()
    if source.kind == "camera":
        devices = sorted(glob.glob("/dev/video*")) if os.name == "posix" else []
        found = f"; cameras found: {', '.join(devices)}" if devices else (
            "; no /dev/video* device here" if os.path.isdir("/dev") else "")
        raise VideoSourceError(f"camera {source.target} cannot be opened (source={source.target}: no such camera, "
                               f"or it is in use){found}")
    if source.kind == "stream":
        raise VideoSourceError(f"stream {redact(source.target)} cannot be opened within {timeout:g} s (unreachable, "
                               "refused or not a video stream; check the URL, or raise stream_timeout)")
    raise VideoSourceError(f"video {source.target} cannot be opened: not a video OpenCV can read (a damaged file, "
                           "or a codec this OpenCV build lacks)")


def video_writer(path: Path, fps: float, width: int, height: int):
    """(an opened cv2.VideoWriter, its path): mp4v in ``path`` (.mp4), else MJPG in .avi; (None, None)
    when neither can be written here."""
    cv2 = require_cv2()
    for fourcc, suffix in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        target = path.with_suffix(suffix)
        with quiet_opencv(cv2):
            writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
        if writer.isOpened():
            return writer, target
        writer.release()
        target.unlink(missing_ok=True)
    log.warning("this OpenCV cannot write mp4v or MJPG video; %s gets no annotated video", path.stem)
    return None, None


# ------------------------------------------------------------------------------------------ predict
def predict_video(predictor, source: VideoSource, out_dir: str | os.PathLike, imgsz: int, conf: float = 0.25,
                  iou: float = 0.7, max_det: int = 300, save_video: bool = True, timeout: float = 10.0,
                  max_frames: int | None = None, used: set[str] | None = None) -> dict:
    """Predict every frame of ``source`` (as ``predict_image`` predicts an image) and write
    ``<name>.jsonl`` and the annotated video to ``out_dir`` (module docstring).

    Returns {"source": str, "frames": int, "jsonl": Path, "video": Path or None, "fps": float,
    "interrupted": bool (Ctrl-C stopped it)}. Raises VideoSourceError when it gives no frame."""
    from tqdm import tqdm

    cv2 = require_cv2()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(predictor.names or [])
    capture = open_capture(source, timeout)
    stem = unique_stem(source.name, used if used is not None else set())
    jsonl, writer, video_path = out_dir / f"{stem}.jsonl", None, None
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    total = int(count) if source.kind == "video" and math.isfinite(count) and count > 0 else None
    if max_frames is not None:
        total = min(total, max_frames) if total is not None else max_frames
    frames, interrupted = 0, False
    try:
        with jsonl.open("w") as lines, tqdm(total=total, desc=stem, unit="frame", leave=False) as bar:
            while max_frames is None or frames < max_frames:
                ok, frame = capture.read()  # BGR uint8 [H, W, 3]
                if not ok:
                    break
                image = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                detections = predict_image(predictor, image, imgsz, conf, iou, max_det)
                rows = detection_record(Path(stem), image, detections, names)["detections"]
                lines.write(json.dumps({"frame": frames, "detections": rows}) + "\n")
                if save_video:
                    if writer is None and video_path is None:
                        writer, video_path = video_writer(out_dir / f"{stem}.mp4", fps, image.shape[1],
                                                          image.shape[0])
                    if writer is not None:
                        picture = draw(image, detections, names).permute(1, 2, 0).numpy()  # [H, W, 3] RGB
                        writer.write(cv2.cvtColor(np.ascontiguousarray(picture), cv2.COLOR_RGB2BGR))
                frames += 1
                bar.update()
    except KeyboardInterrupt:  # the way a camera or a stream ends
        interrupted = True
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0 and not interrupted:
        jsonl.unlink(missing_ok=True)
        if video_path is not None:
            video_path.unlink(missing_ok=True)
        if source.kind == "stream":
            raise VideoSourceError(f"stream {redact(source.target)} opened but sent no frame within {timeout:g} s")
        raise VideoSourceError(f"{source} has no frame OpenCV can decode (empty, or an unreadable file)")
    log.info("%s: %d frames%s; wrote %s%s", source, frames, " (stopped by Ctrl-C)" if interrupted else "", jsonl,
             f" and {video_path}" if video_path is not None else "")
    return {"source": str(source), "frames": frames, "jsonl": jsonl, "video": video_path, "fps": fps,
            "interrupted": interrupted}


def predict_videos(predictor, videos: list[VideoSource], out_dir: str | os.PathLike, imgsz: int, conf: float,
                   iou: float, max_det: int, save_video: bool = True, timeout: float = 10.0,
                   max_frames: int | None = None, used: set[str] | None = None) -> list[dict]:
    """``predict_video`` on each source in turn (stems kept unique); Ctrl-C ends the one running and the rest."""
    used = set() if used is None else used
    summaries = []
    for source in videos:
        summaries.append(predict_video(predictor, source, out_dir, imgsz, conf, iou, max_det, save_video, timeout,
                                       max_frames, used))
        if summaries[-1]["interrupted"]:
            break
    return summaries
