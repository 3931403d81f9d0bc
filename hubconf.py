"""Python API and torch.hub entry points, in the manner of YOLOv5/YOLOv7's hub models.

    import torch
    model = torch.hub.load("path/to/this/repo", "custom", "best.pt", source="local")
    model = torch.hub.load("path/to/this/repo", "yolov7_tiny_ms0", source="local")   # random init
    model.conf, model.iou, model.classes, model.max_det = 0.25, 0.45, None, 300
    results = model(["a.jpg", "https://host/b.jpg", pil_image, bgr_array], size=640)
    results.print(); results.save("out/"); results.crop(save=True); frames = results.render()
    results.xyxy[0]            # (n, 6) x1, y1, x2, y2, conf, cls in original pixels (also xywh, *n)
    results.pandas().xyxy[0]   # DataFrame: xmin ymin xmax ymax confidence class name
    for r in model.track("video.mp4", tracker="bytetrack"):   # or "botsort", a tracker yaml
        r.xyxy[0], r.ids[0]    # per frame: tracked boxes and their track IDs (.pandas() adds an id column)

``custom`` loads any file ``models.backend.load_backend`` takes (training or fused ``.pt``,
``.torchscript.pt``, ``.onnx``, ...); the device is CUDA when available unless ``device=`` says
otherwise. Nothing is ever downloaded except an image URL that is passed in. The older helpers
stay: ``load(weights)``, ``detect(model, image) -> dict`` and ``Detector``.

Inputs (alone or in a list, which is run as one batch): a path, an http(s) URL, a PIL image, a
numpy array (H, W, 3) uint8 in OpenCV's BGR order (``rgb=True`` for RGB; grey and BGRA are
converted), or a torch tensor (3, H, W) / (N, 3, H, W) holding RGB in 0..1 (float) or 0..255
(uint8). Paths and URLs are read with the checks detect.py uses (regular files only, the
decompression-bomb pixel limit, truncated JPEGs refused).
"""
from __future__ import annotations

import copy
import io
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

dependencies = ["torch", "torchvision", "numpy", "yaml", "cv2", "PIL", "pandas"]  # torch.hub checks these

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ImageLike = Any  # str | Path | URL | PIL.Image | np.ndarray | torch.Tensor
URL_PREFIXES = ("http://", "https://")
MAX_URL_BYTES = 64 * 2 ** 20  # an image URL larger than this is refused


# --------------------------------------------------------------------------- reading images
def _fetch_url(url: str, timeout: float = 30.0) -> np.ndarray:
    """BGR image from an http(s) URL (read only when asked; size and pixel limits before decoding)."""
    import urllib.request

    import cv2
    from PIL import Image

    from utils.data.files import MAX_IMAGE_PIXELS

    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - http(s) only, checked by caller
        data = r.read(MAX_URL_BYTES + 1)
    if len(data) > MAX_URL_BYTES:
        raise ValueError(f"{url}: larger than {MAX_URL_BYTES >> 20} MB; refused")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001 - PIL raises several types for non-images and bombs
        raise ValueError(f"{url}: not a readable image ({type(e).__name__}: {e})") from None
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"{url}: refused: {w}x{h} is over the {MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel limit")
    im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if im is None:
        raise ValueError(f"{url}: OpenCV cannot decode this image")
    return im


def _read_path(p: Union[str, Path]) -> np.ndarray:
    from utils.data.sources import read_source_image

    if not os.path.lexists(p):
        raise FileNotFoundError(2, "not found or not a readable image", str(p))
    return read_source_image(str(p))


def _from_array(image: np.ndarray, rgb: bool) -> np.ndarray:
    """BGR uint8 (H, W, 3) from an (H, W[, 1|3|4]) uint8 array in BGR (or RGB when ``rgb``) order."""
    import cv2

    if image.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 (0..255), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGR if rgb else cv2.COLOR_BGRA2BGR)
    elif rgb and image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image array must be (H, W, 3) BGR (or RGB with rgb=True), got shape {image.shape}")
    return np.ascontiguousarray(image)


def _from_tensor(t: torch.Tensor) -> list[np.ndarray]:
    """BGR uint8 arrays from an RGB tensor (3, H, W) or (N, 3, H, W), 0..1 float or 0..255 uint8."""
    t = t.detach().cpu()
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"image tensor must be (3, H, W) or (N, 3, H, W) RGB, got shape {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        t = (t.float() * 255).round().clamp(0, 255).to(torch.uint8)
    return [np.ascontiguousarray(x.permute(1, 2, 0).numpy()[:, :, ::-1]) for x in t]


def read_images(x: Any, rgb: bool = False) -> tuple[list[np.ndarray], list[str]]:
    """(BGR uint8 images, file names) from any supported input or a list of them."""
    from PIL import Image

    items = list(x) if isinstance(x, (list, tuple)) else [x]
    ims: list[np.ndarray] = []
    files: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            s = str(item)
            ims.append(_fetch_url(s) if s.lower().startswith(URL_PREFIXES) else _read_path(item))
            files.append(Path(s.split("?")[0]).name or f"image{i}.jpg")
        elif isinstance(item, Image.Image):
            ims.append(_from_array(np.asarray(item.convert("RGB")), rgb=True))
            files.append(Path(getattr(item, "filename", "") or f"image{i}.jpg").name)
        elif isinstance(item, np.ndarray):
            ims.append(_from_array(item, rgb))
            files.append(f"image{i}.jpg")
        elif isinstance(item, torch.Tensor):
            new = _from_tensor(item)
            ims += new
            files += [f"image{i}.jpg" if len(new) == 1 else f"image{i}_{j}.jpg" for j in range(len(new))]
        else:
            raise TypeError(f"image {i}: expected a path, URL, PIL image, numpy array or tensor, "
                            f"got {type(item).__name__}")
    return ims, files


# --------------------------------------------------------------------------- model wrapper
class AutoShape(torch.nn.Module):
    """A loaded model that takes images as they come and returns :class:`Detections`.

    Settings (attributes, or keyword arguments of a call): ``conf``, ``iou``, ``classes``,
    ``agnostic``, ``max_det``. ``model.backend`` is the ``models.backend.Backend`` it runs.
    """

    conf = 0.25
    iou = 0.45
    classes: Optional[Sequence[int]] = None
    agnostic = False
    max_det = 1000

    def __init__(self, backend: Any):
        super().__init__()
        self.backend = backend
        if isinstance(getattr(backend, "model", None), torch.nn.Module):
            self.model = backend.model  # registered, so .eval()/.to() reach it
        self.eval()

    @property
    def names(self) -> list[str]:
        return list(self.backend.names)

    @property
    def stride(self) -> int:
        return int(self.backend.stride)

    def _shape(self, ims: list[np.ndarray], size: Union[int, Sequence[int]]) -> tuple[list[int], bool]:
        """Network input (h, w) and letterbox ``auto`` for a batch: one image as detect.py, several
        padded to the smallest stride-multiple shape that holds each resized to ``size``."""
        shape, auto = self.backend.input_size(size)
        if not auto or len(ims) == 1:
            return shape, auto
        g = [max(shape) / max(im.shape[:2]) for im in ims]
        hw = [max(im.shape[d] * gi for im, gi in zip(ims, g)) for d in (0, 1)]
        s = self.stride
        return [int(np.ceil(v / s) * s) for v in hw], False

    def _run(self, x: torch.Tensor, opt: dict) -> list[torch.Tensor]:
        """Detections of a batch, in chunks of the backend's fixed batch size when it has one."""
        b = self.backend
        n = b.batch or len(x)
        out = []
        for i in range(0, len(x), n):
            chunk = x[i:i + n]
            if len(chunk) < n:  # a static graph: pad the last chunk, drop the padding's results
                chunk = torch.cat((chunk, chunk.new_zeros((n - len(chunk), *chunk.shape[1:]))))
            out += b.predict(chunk, opt["conf"], opt["iou"], opt["classes"], opt["agnostic"], opt["max_det"],
                             opt["augment"])[:len(x) - i]
        return out

    def _settings(self, augment: bool, settings: dict) -> dict:
        bad = set(settings) - {"conf", "iou", "classes", "agnostic", "max_det"}
        if bad:
            raise TypeError(f"unknown setting(s) {sorted(bad)}; use conf, iou, classes, agnostic, max_det")
        opt = {k: settings.get(k, getattr(self, k)) for k in ("conf", "iou", "classes", "agnostic", "max_det")}
        opt["augment"] = augment and self.backend.supports_augment
        return opt

    def _detect(self, x: torch.Tensor, im0s: list[np.ndarray], opt: dict) -> list[torch.Tensor]:
        """Detections of the letterboxed batch ``x``, in the pixels of the original images ``im0s``."""
        from utils.boxes import scale_coords

        dets = []
        for det, im in zip(self._run(x, opt), im0s):
            det = det.detach().float().cpu().clone()
            if len(det):
                det[:, :4] = scale_coords(x.shape[2:], det[:, :4], im.shape)
            dets.append(det)
        return dets

    @torch.no_grad()
    def forward(self, ims: Any, size: Union[int, Sequence[int]] = 640, augment: bool = False, rgb: bool = False,
                **settings: Any) -> "Detections":
        from utils.data.preprocess import preprocess, to_tensor

        opt = self._settings(augment, settings)
        t0 = time.perf_counter()
        im0s, files = read_images(ims, rgb)
        shape, auto = self._shape(im0s, size)
        x = to_tensor([preprocess(im, shape, self.stride, auto)[0] for im in im0s], self.backend.device,
                      self.backend.fp16)
        t1 = time.perf_counter()
        dets = self._detect(x, im0s, opt)
        t2 = time.perf_counter()
        times = (1e3 * (t1 - t0) / len(im0s), 1e3 * (t2 - t1) / len(im0s))
        return Detections(im0s, dets, files, self.names, times, tuple(x.shape))

    @torch.no_grad()
    def track(self, source: Any, tracker: Any = "bytetrack", size: Union[int, Sequence[int]] = 640,
              augment: bool = False, rgb: bool = False, **settings: Any) -> Iterator["Detections"]:
        """Track objects through ``source``, one :class:`Detections` per frame (per batch of streams) whose
        ``ids[i]`` are the track IDs of the rows of ``xyxy[i]`` (only tracked boxes are kept).

        ``source``: a video file, a folder of frames, a glob, a .txt list, a webcam index or a stream URL
        (read as detect.py reads them), or a list of images in frame order (any input ``__call__`` takes).
        ``tracker``: ``bytetrack``, ``botsort``, a tracker yaml or a ``utils.tracking.TrackerConfig``.
        Detections down to the tracker's ``track_low_thresh`` reach it, whatever ``conf`` says.
        """
        from utils.tracking import TrackSession, load_tracker_config

        session = TrackSession(load_tracker_config(tracker))
        opt = self._settings(augment, settings)
        opt["conf"] = min(opt["conf"], session.cfg.track_low_thresh)
        frames = self._track_files(source, size) if isinstance(source, (str, Path)) else self._track_images(
            source, size, rgb)
        for x, im0s, files, seqs, t0 in frames:
            t1 = time.perf_counter()
            dets = self._detect(x, im0s, opt)
            t2 = time.perf_counter()
            out, ids = [], []
            for det, im, (key, frame_no, fps) in zip(dets, im0s, seqs):
                tracked = session.step(key, frame_no, det.numpy(), im, fps)[1]
                out.append(torch.from_numpy(tracked[:, :6]).float())
                ids.append(torch.from_numpy(tracked[:, 6].astype(np.int64)))
            n = len(im0s)
            times = (1e3 * (t1 - t0) / n, 1e3 * (t2 - t1) / n, 1e3 * (time.perf_counter() - t2) / n)
            yield Detections(im0s, out, files, self.names, times, tuple(x.shape), ids=ids)

    def _track_files(self, source: Union[str, Path], size: Union[int, Sequence[int]]) -> Iterator[tuple]:
        """(batch, originals, names, (sequence, frame number, fps) per image, start time) from a path source."""
        import cv2

        from utils.data.preprocess import to_tensor
        from utils.data.sources import LoadImages, LoadStreams, folder_frame_numbers, frame_sequence, is_stream

        shape, auto = self.backend.input_size(size)
        stream = is_stream(str(source))
        ds = LoadStreams(str(source), shape, self.stride, auto) if stream else LoadImages(source, shape, self.stride,
                                                                                           auto)
        numbers = folder_frame_numbers(ds)
        try:
            t0 = time.perf_counter()
            for path, img, im0s, cap, _ in ds:
                paths, im0s = (list(path), list(im0s)) if stream else ([path], [im0s])
                fps = [(cap.get(cv2.CAP_PROP_FPS) if cap else 0) or (ds.fps[i] if stream else 30.0)
                       for i in range(len(paths))]
                seqs = [frame_sequence(ds, str(p), i, numbers) for i, p in enumerate(paths)]
                yield (to_tensor(img, self.backend.device, self.backend.fp16), im0s, [Path(str(p)).name for p in paths],
                       [(k, f, r) for (k, _, f), r in zip(seqs, fps)], t0)
                t0 = time.perf_counter()
        finally:
            if stream:
                ds.close()

    def _track_images(self, source: Any, size: Union[int, Sequence[int]], rgb: bool) -> Iterator[tuple]:
        """The same from images in frame order (a list or iterator of anything ``__call__`` takes)."""
        from utils.data.preprocess import preprocess, to_tensor

        items = [source] if isinstance(source, (np.ndarray, torch.Tensor)) else source
        k = 0
        for item in items:
            t0 = time.perf_counter()
            for im, f in zip(*read_images(item, rgb)):
                k += 1
                shape, auto = self._shape([im], size)
                x = to_tensor(preprocess(im, shape, self.stride, auto)[0], self.backend.device, self.backend.fp16)
                yield x, [im], [f], [("images", k, 30.0)], t0
                t0 = time.perf_counter()


# --------------------------------------------------------------------------- results
class Detections:
    """Results of one call: per image ``xyxy``, ``xywh``, ``xyxyn``, ``xywhn`` tensors (n, 6) with
    conf and class in the last two columns; ``ims`` the original images (BGR), ``files`` their names;
    ``ids`` the track IDs of each image's rows when the results come from :meth:`AutoShape.track`."""

    def __init__(self, ims: list[np.ndarray], pred: list[torch.Tensor], files: list[str], names: list[str],
                 times: tuple[float, ...] = (0.0, 0.0), shape: tuple = (), ids: Optional[list[torch.Tensor]] = None):
        from utils.boxes import xyxy2xywh

        self.ims, self.pred, self.files, self.names, self.times, self.shape = ims, pred, files, names, times, shape
        self.ids = ids  # per image (n,) int64 track IDs of the rows, from AutoShape.track; else None
        gn = [torch.tensor([im.shape[1], im.shape[0], im.shape[1], im.shape[0], 1.0, 1.0]) for im in ims]
        self.xyxy = pred
        self.xywh = [torch.cat((xyxy2xywh(p[:, :4]), p[:, 4:]), 1) for p in pred]
        self.xyxyn = [p / g for p, g in zip(self.xyxy, gn)]
        self.xywhn = [p / g for p, g in zip(self.xywh, gn)]
        self.n = len(pred)

    def __len__(self) -> int:
        return self.n

    def _label(self, c: float) -> str:
        c = int(c)
        return self.names[c] if 0 <= c < len(self.names) else str(c)

    def __str__(self) -> str:
        lines = []
        for i, (im, p) in enumerate(zip(self.ims, self.pred)):
            s = f"image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} "
            if len(p):
                for c in p[:, 5].unique():
                    k = int((p[:, 5] == c).sum())
                    s += f"{k} {self._label(c)}{'s' * (k > 1)}, "
            else:
                s += "(no detections)"
            lines.append(s.rstrip(", "))
        track = f", {self.times[2]:.1f}ms tracking" if len(self.times) > 2 else ""
        lines.append(f"Speed: {self.times[0]:.1f}ms pre-process, {self.times[1]:.1f}ms inference + NMS{track} per "
                     f"image at shape {self.shape}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Detections: {self.n} image(s), {sum(len(p) for p in self.pred)} box(es)>"

    def print(self) -> None:
        """Print the per-image summary (what was found, speed) to stdout, as YOLOv5's results do."""
        print(str(self))

    def render(self, labels: bool = True) -> list[np.ndarray]:
        """Copies of the images (BGR) with boxes and labels drawn."""
        from utils.plots import colors, plot_one_box

        out = []
        for k, (im, p) in enumerate(zip(self.ims, self.pred)):
            im = im.copy()
            ids = self.ids[k].tolist() if self.ids is not None else [None] * len(p)
            for (*xyxy, conf, cls), tid in reversed(list(zip(p.tolist(), ids))):
                text = f"{self._label(cls)} {conf:.2f}" if tid is None else f"#{tid} {self._label(cls)} {conf:.2f}"
                plot_one_box(xyxy, im, color=colors(int(cls) if tid is None else tid, bgr=True),
                             label=text if labels else None)
            out.append(im)
        return out

    def show(self) -> None:
        """Show the rendered images in a window; without a display it logs a warning and returns."""
        import cv2

        from utils.log import LOGGER

        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            LOGGER.warning("WARNING: Detections.show(): no display here; use .save(dir) or .render() instead")
            return
        try:
            for f, im in zip(self.files, self.render()):
                cv2.imshow(f, im)
            cv2.waitKey(1)
        except cv2.error as e:
            LOGGER.warning(f"WARNING: Detections.show() unavailable (headless OpenCV?): {str(e).splitlines()[0]}")

    def save(self, save_dir: Union[str, Path] = "runs/hub/exp", exist_ok: bool = False, labels: bool = True) -> Path:
        """Write the rendered images to a fresh ``save_dir`` (incremented unless ``exist_ok``); returns it."""
        from utils.log import LOGGER
        from utils.runs import increment_path

        d = increment_path(save_dir, exist_ok=exist_ok)
        d.mkdir(parents=True, exist_ok=True)
        for f, im in zip(self._unique_files(), self.render(labels)):
            _imwrite(d / f, im)
        LOGGER.info(f"Saved {self.n} image(s) to {d}")
        return d

    def _unique_files(self) -> list[str]:
        seen: dict[str, int] = {}
        out = []
        for f in self.files:
            k = seen.get(f, 0)
            seen[f] = k + 1
            stem, suf = os.path.splitext(f)
            out.append(f if k == 0 else f"{stem}_{k}{suf or '.jpg'}")
        return [f if os.path.splitext(f)[1] else f + ".jpg" for f in out]

    def crop(self, save: bool = True, save_dir: Union[str, Path] = "runs/hub/exp",
             exist_ok: bool = False) -> list[dict]:
        """Each box's image region: dicts with box, conf, cls, label and im (BGR); with ``save`` written to
        ``save_dir/crops/<class>/<file>_<k>.jpg``."""
        from utils.runs import increment_path

        d = increment_path(save_dir, exist_ok=exist_ok) if save else None
        crops = []
        for f, im, p in zip(self._unique_files(), self.ims, self.pred):
            for k, (*xyxy, conf, cls) in enumerate(reversed(p.tolist())):
                x1, y1, x2, y2 = (int(round(v)) for v in xyxy)
                x1, y1 = min(max(x1, 0), im.shape[1] - 1), min(max(y1, 0), im.shape[0] - 1)
                x2, y2 = max(min(x2, im.shape[1]), x1 + 1), max(min(y2, im.shape[0]), y1 + 1)
                c = {"box": xyxy, "conf": conf, "cls": int(cls), "label": self._label(cls),
                     "im": im[y1:y2, x1:x2].copy()}
                if d is not None:
                    c["file"] = d / "crops" / c["label"] / f"{Path(f).stem}_{k}.jpg"
                    _imwrite(c["file"], c["im"])
                crops.append(c)
        return crops

    def pandas(self) -> "Detections":
        """A copy whose ``xyxy``, ``xywh``, ``xyxyn``, ``xywhn`` are lists of pandas DataFrames
        (xmin ymin xmax ymax / xcenter ycenter width height, confidence, class, name; and id for
        tracked results)."""
        import pandas as pd

        new = copy.copy(self)
        ca = ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
        cb = ["xcenter", "ycenter", "width", "height", "confidence", "class", "name"]
        for k, cols in zip(("xyxy", "xyxyn", "xywh", "xywhn"), (ca, ca, cb, cb)):
            frames = []
            for i, p in enumerate(getattr(self, k)):
                rows = [r[:5] + [int(r[5]), self._label(r[5])] for r in p.tolist()]
                df = pd.DataFrame(rows, columns=cols)
                if self.ids is not None:
                    df["id"] = self.ids[i].tolist()
                frames.append(df)
            setattr(new, k, frames)
        return new


def _imwrite(path: Path, im: np.ndarray) -> None:
    import cv2

    from utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), im):
            raise OSError(0, "OpenCV could not write the image", str(path))


# --------------------------------------------------------------------------- entry points
def _device(device: Union[str, torch.device, None]) -> torch.device:
    from utils.torch_utils import select_device

    return device if isinstance(device, torch.device) else select_device("" if device is None else str(device))


def custom(path: Union[str, Path, Sequence[Union[str, Path]]] = "best.pt", autoshape: bool = True,
           device: Union[str, torch.device, None] = None, threads: Optional[int] = None, verbose: bool = False):
    """A model file (any format ``models.backend`` loads; several = an ensemble) as an :class:`AutoShape`
    model (``autoshape=False``: the bare backend). Device: CUDA when available unless ``device`` says."""
    from models.backend import load_backend

    dev = _device(device)
    b = load_backend(path, dev, threads=threads, half=dev.type == "cuda", verbose=verbose)
    return AutoShape(b) if autoshape else b


def yolov7_tiny_ms0(pretrained: Union[bool, str, Path] = False, channels: int = 3, classes: int = 80,
                    autoshape: bool = True, device: Union[str, torch.device, None] = None,
                    threads: Optional[int] = None, verbose: bool = False):
    """yolov7-tiny with the MobileOne-S0 backbone: random init (``pretrained=False``), or the
    weights of a local checkpoint (``pretrained="best.pt"``). Nothing is downloaded."""
    from models.backend import PyTorchBackend, set_threads
    from models.yolo import Model

    if isinstance(pretrained, (str, Path)):
        return custom(pretrained, autoshape, device, threads, verbose)
    if pretrained:
        raise ValueError("yolov7_tiny_ms0(pretrained=True): no weights are downloaded; give a local checkpoint "
                         "path, e.g. pretrained='runs/train/exp/weights/best.pt'")
    set_threads(threads)
    dev = _device(device)
    model = Model(ROOT / "cfg" / "training" / "yolov7-tiny-ms0.yaml", ch=channels, nc=classes)
    model.names = [str(i) for i in range(classes)]
    b = PyTorchBackend.from_model(model, dev, fuse=True, half=dev.type == "cuda")
    return AutoShape(b) if autoshape else b


def load(weights: Union[str, Path], device: Union[str, torch.device, None] = None,
         threads: Optional[int] = None) -> AutoShape:
    """A ready-to-run detector for ``weights`` (any supported file); same as :func:`custom`."""
    return custom(weights, device=device, threads=threads)


@torch.no_grad()
def detect(model_or_weights: Any, image: ImageLike, img_size: int = 640, conf_thres: float = 0.25,
           iou_thres: float = 0.45, classes: Optional[Sequence[int]] = None, agnostic: bool = False,
           max_det: int = 300, augment: bool = False) -> dict[str, Any]:
    """Detect objects in one image (a path, or a BGR uint8 array as ``cv2.imread`` gives).

    ``model_or_weights``: what :func:`load` returns, or a weights path (loaded on the default device).
    Returns ``{"boxes": (n, 4) xyxy original pixels, "scores": (n,), "classes": (n,), "names": [...]}``
    sorted by decreasing score.
    """
    model = load(model_or_weights) if isinstance(model_or_weights, (str, Path)) else model_or_weights
    if not isinstance(model, AutoShape):
        model = AutoShape(model)
    if isinstance(image, (list, tuple)):
        raise TypeError("detect() takes one image; call the model itself for a batch")
    r = model(image, size=img_size, augment=augment, conf=conf_thres, iou=iou_thres, classes=classes,
              agnostic=agnostic, max_det=max_det)
    det = r.xyxy[0]
    return {"boxes": det[:, :4].numpy().astype(np.float32), "scores": det[:, 4].numpy().astype(np.float32),
            "classes": det[:, 5].numpy().astype(np.int64), "names": list(model.names)}


class Detector:
    """A loaded model plus inference settings; ``Detector(w)(image)`` returns :func:`detect`'s dict."""

    def __init__(self, weights: Union[str, Path], device: Union[str, torch.device, None] = None,
                 img_size: int = 640, conf_thres: float = 0.25, iou_thres: float = 0.45,
                 classes: Optional[Sequence[int]] = None, agnostic: bool = False, max_det: int = 300):
        self.model = load(weights, device)
        self.kwargs = dict(img_size=img_size, conf_thres=conf_thres, iou_thres=iou_thres, classes=classes,
                           agnostic=agnostic, max_det=max_det)

    @property
    def names(self) -> list[str]:
        return list(self.model.names)

    def __call__(self, image: ImageLike, **overrides: Any) -> dict[str, Any]:
        return detect(self.model, image, **{**self.kwargs, **overrides})
