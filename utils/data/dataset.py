"""The training and evaluation dataset: ``LoadImagesAndLabels`` yields letterboxed (and, when training,
augmented) images with their labels; its collates build batches ``(imgs uint8 (B,3,H,W) RGB, targets (N,6)
[img_idx, cls, cx, cy, w, h], paths, shapes)``.
"""
from __future__ import annotations

import os
import random
import time
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.atomic import atomic_write
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.data.augment import augment_hsv, check_hyp, flip_labels, letterbox, mixup, random_perspective
from utils.data.cache import NUM_THREADS, _fallback_path, is_writable_dir, log_report, scan_dataset, user_cache_dir
from utils.data.files import ImageReadError, PathArg, read_image

# --------------------------------------------------------------------------- inference sources
from utils.data.sources import LoadImages, LoadStreams  # noqa: F401,E402
from utils.log import LOGGER


# --------------------------------------------------------------------------- dataset
class LoadImagesAndLabels(Dataset):
    """A YOLO-format split for training (mosaic/mixup/perspective/HSV/flips) or evaluation (rect).

    Items: ``(img uint8 (3, H, W) RGB, labels (n, 6) [0, cls, cx, cy, w, h] normalised, path,
    shapes)`` where ``shapes = ((h0, w0), ((h / h0, w / w0), (padw, padh)))``, or None for mosaic.
    """

    def __init__(self, path: PathArg, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: Optional[dict] = None, rect: bool = False, cache_images: Union[bool, str] = False,
                 single_cls: bool = False, stride: int = 32, pad: float = 0.0, prefix: str = "",
                 nc: Optional[int] = None, verbose: bool = True):
        self.img_size = img_size
        self.augment = augment
        self.hyp = check_hyp(hyp, prefix) if augment else (dict(hyp) if hyp else {})
        self.rect = rect
        self.mosaic = augment and not rect and self.hyp.get("mosaic", 0) > 0
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        self.stride = stride
        self.path = path
        self.prefix = prefix

        scan = scan_dataset(path, nc=nc, prefix=prefix)
        self.report = scan.report
        if verbose:
            log_report(self.report)
        self.img_files = scan.img_files
        self.label_files = scan.label_files
        self.labels = scan.labels
        self.shapes = scan.shapes
        if single_cls:
            for x in self.labels:
                x[:, 0] = 0

        n = len(self.shapes)
        bi = np.floor(np.arange(n) / batch_size).astype(int)
        self.batch = bi
        self.n = n
        self.indices = list(range(n))

        if rect:  # sort by aspect ratio; each batch gets the smallest stride-multiple shape
            s = self.shapes
            ar = s[:, 1] / s[:, 0]
            irect = ar.argsort(kind="stable")
            self.img_files = [self.img_files[i] for i in irect]
            self.label_files = [self.label_files[i] for i in irect]
            self.labels = [self.labels[i] for i in irect]
            self.shapes = s[irect]
            ar = ar[irect]
            nb = bi[-1] + 1
            shapes = [[1, 1]] * nb
            for i in range(nb):
                ari = ar[bi == i]
                mini, maxi = ari.min(), ari.max()
                if maxi < 1:
                    shapes[i] = [maxi, 1]
                elif mini > 1:
                    shapes[i] = [1, 1 / mini]
            self.batch_shapes = np.ceil(np.array(shapes) * img_size / stride + pad).astype(int) * stride

        self.imgs: list[Optional[np.ndarray]] = [None] * n
        self.img_hw0: list[Optional[tuple[int, int]]] = [None] * n
        self.img_hw: list[Optional[tuple[int, int]]] = [None] * n
        self.npy_files: list[Optional[Path]] = [None] * n
        if cache_images is True:
            cache_images = "ram"
        if cache_images:
            self._cache_images(str(cache_images))

    # ------------------------------------------------------------------ image loading / caching
    def _npy_path(self, f: str) -> Path:
        p = Path(f).with_suffix(".npy")
        return p if is_writable_dir(p.parent) else _fallback_path(p)

    def _cache_images(self, mode: str) -> None:
        if mode not in ("ram", "disk"):
            raise ValueError(f"cache_images must be False, 'ram' or 'disk', got {mode!r}")
        if mode == "ram":
            need = sum(self._scaled_bytes(i) for i in range(self.n))
            try:
                avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
            except (ValueError, OSError, AttributeError):
                avail = None
            if avail is not None and need > 0.8 * avail:
                LOGGER.warning(f"{self.prefix}WARNING: caching images in RAM needs {need / 1e9:.1f} GB but only "
                               f"{avail / 1e9:.1f} GB is free: not caching")
                return
        else:
            self.npy_files = [self._npy_path(f) for f in self.img_files]
            user_cache_dir().mkdir(parents=True, exist_ok=True)
        t0, nbytes = time.time(), 0

        def work(i: int):
            if mode == "disk":
                f = self.npy_files[i]
                if not f.exists():
                    with atomic_write(f, "wb") as fh:  # complete or absent, even when killed
                        np.save(fh, self._read(i))
                return f.stat().st_size
            im, hw0, hw = self.load_image(i)
            self.imgs[i], self.img_hw0[i], self.img_hw[i] = im, hw0, hw
            return im.nbytes

        with ThreadPool(NUM_THREADS) as pool:
            for b in pool.imap(work, range(self.n)):
                nbytes += b
        LOGGER.info(f"{self.prefix}cached {self.n} images ({nbytes / 1e9:.2f} GB, {mode}) in {time.time() - t0:.1f}s")

    def _scaled_bytes(self, i: int) -> int:
        w, h = self.shapes[i]
        r = self.img_size / max(w, h)
        return int(w * r) * int(h * r) * 3

    def _read(self, i: int) -> np.ndarray:
        try:
            return read_image(self.img_files[i])
        except ImageReadError as e:  # changed since the scan: the checker accepted it
            raise ImageReadError(f"{self.prefix}{e}") from None

    def _load_npy(self, i: int) -> Optional[np.ndarray]:
        """The --cache-images disk copy of image i, or None (absent or unusable: the image is read)."""
        npy = self.npy_files[i]
        if npy is None or not npy.is_file():
            return None
        try:
            im = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as e:
            LOGGER.warning(f"{self.prefix}WARNING: ignoring unreadable image cache {npy} ({e})")
            return None
        return im if (im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3) else None

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image i (BGR) resized so its long side is img_size; returns (img, (h0, w0), (h, w))."""
        im = self.imgs[i]
        if im is not None:
            return im, self.img_hw0[i], self.img_hw[i]
        im = self._load_npy(i)
        if im is None:
            im = self._read(i)
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_AREA if (r < 1 and not self.augment) else cv2.INTER_LINEAR
            im = cv2.resize(im, (max(1, int(round(w0 * r))), max(1, int(round(h0 * r)))), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """4 images around a random centre on a 2s x 2s canvas, then random_perspective to s x s."""
        s = self.img_size
        yc, xc = (int(random.uniform(-x, 2 * s + x)) for x in self.mosaic_border)
        indices = [index] + random.choices(self.indices, k=3)
        img4 = None
        labels4 = []
        for k, idx in enumerate(indices):
            img, _, (h, w) = self.load_image(idx)
            if k == 0:
                img4 = np.full((s * 2, s * 2, img.shape[2]), 114, dtype=np.uint8)
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif k == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif k == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            img4[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            padw, padh = x1a - x1b, y1a - y1b
            labels = self.labels[idx].astype(np.float64)
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, padw, padh)
            labels4.append(labels)
        labels4 = np.concatenate(labels4, 0)
        np.clip(labels4[:, 1:], 0, 2 * s, out=labels4[:, 1:])
        hyp = self.hyp
        img4, labels4 = random_perspective(img4, labels4, degrees=hyp["degrees"], translate=hyp["translate"],
                                           scale=hyp["scale"], shear=hyp["shear"], perspective=hyp["perspective"],
                                           border=self.mosaic_border)
        return img4, labels4

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.img_files)

    def __getitem__(self, index: int):
        index = self.indices[index]
        hyp = self.hyp
        mosaic = self.mosaic and random.random() < hyp["mosaic"]
        if mosaic:
            img, labels = self.load_mosaic(index)
            shapes = None
            if hyp["mixup"] and random.random() < hyp["mixup"]:
                img2, labels2 = self.load_mosaic(random.randint(0, self.n - 1))
                img, labels = mixup(img, labels, img2, labels2)
        else:
            img, (h0, w0), (h, w) = self.load_image(index)
            shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0, w / w0), pad)
            labels = self.labels[index].astype(np.float64)
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
            if self.augment:
                img, labels = random_perspective(img, labels, degrees=hyp["degrees"], translate=hyp["translate"],
                                                 scale=hyp["scale"], shear=hyp["shear"],
                                                 perspective=hyp["perspective"])
        if self.augment:
            augment_hsv(img, hgain=hyp["hsv_h"], sgain=hyp["hsv_s"], vgain=hyp["hsv_v"])

        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True)
        if self.augment:
            img, labels = flip_labels(labels, img, hyp)

        labels_out = torch.zeros((nl, 6))
        if nl:
            labels_out[:, 1:] = torch.from_numpy(labels)
        img = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(img), labels_out, self.img_files[index], shapes

    @staticmethod
    def collate_fn(batch):
        """Stack images; concatenate targets with their image index in column 0."""
        img, label, path, shapes = zip(*batch)
        for i, lb in enumerate(label):
            lb[:, 0] = i
        return torch.stack(img, 0), torch.cat(label, 0), path, shapes

    @staticmethod
    def collate_fn4(batch):
        """YOLOv7's ``--quad`` collate: every 4 images become one image of twice the size.

        Per group, with probability 0.5 the first image is upsampled 2x (bilinear), else the four
        are tiled 2x2 (0 top-left, 1 bottom-left, 2 top-right, 3 bottom-right) and their
        normalised xywh targets moved and halved to match. Images beyond a multiple of 4 are
        dropped (as YOLOv7); a batch of fewer than 4 upsamples each image. Train with the loss x4.
        """
        import torch.nn.functional as F

        img, label, path, shapes = zip(*batch)
        groups = [[i] for i in range(len(img))] if len(img) < 4 else [[i, i + 1, i + 2, i + 3]
                                                                       for i in range(0, len(img) - 3, 4)]
        ho = torch.tensor([[0.0, 0, 0, 1, 0, 0]])  # one image height down
        wo = torch.tensor([[0.0, 0, 1, 0, 0, 0]])  # one image width right
        s = torch.tensor([[1.0, 1, 0.5, 0.5, 0.5, 0.5]])
        img4, label4 = [], []
        for g in groups:
            i = g[0]
            if len(g) == 1 or random.random() < 0.5:
                up = F.interpolate(img[i][None].float(), scale_factor=2.0, mode="bilinear", align_corners=False)[0]
                im = up.round().clamp(0, 255).to(img[i].dtype) if not img[i].is_floating_point() else up
                lb = label[i].clone()
            else:
                im = torch.cat((torch.cat((img[i], img[i + 1]), 1), torch.cat((img[i + 2], img[i + 3]), 1)), 2)
                lb = torch.cat((label[i], label[i + 1] + ho, label[i + 2] + wo, label[i + 3] + ho + wo), 0) * s
            img4.append(im)
            label4.append(lb)
        for j, lb in enumerate(label4):
            lb[:, 0] = j
        return (torch.stack(img4, 0), torch.cat(label4, 0), tuple(path[g[0]] for g in groups),
                tuple(shapes[g[0]] for g in groups))


collate_fn = LoadImagesAndLabels.collate_fn
