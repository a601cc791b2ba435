"""Training and evaluation datasets over the annotation table and the token cache.

Training (paper §3.2, §4): one sample per (image, caption) pair of a split. Each sample carries
two augmented views of the image (random horizontal flip), the pair's caption (``text1``) and
``text2``: the same caption, or with probability ``p_weak`` (the paper's p_w = 0.1) a caption of
ANOTHER image of the same person — a weak positive, flagged ``replace = 1`` for p-ITM/PRD
(§3.2, Eq. 3–5). A person with a single image keeps its own caption (``replace = 0``).

All randomness of item ``i`` comes from a generator seeded with ``(seed, epoch, i)``, so the
batches do not depend on the number of DataLoader workers or on their order; call
``set_epoch(e)`` at the start of each epoch.

Evaluation: :class:`ImageDataset` (the gallery of a split, deterministic transform) and
:func:`split_captions` (the split's query captions from the token cache); both index persons
densely over the split, in the same order.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rasa.data.annotations import Annotations, Record, person_index
from rasa.data.token_cache import TokenCache, load_cache
from rasa.data.transforms import MEAN, STD, ImageTransform, load_image
from rasa.errors import ConfigError, DataError

PathLike = str | os.PathLike


def _annotations(annotations: Annotations | None, annotations_path: PathLike) -> Annotations:
    return Annotations.load(annotations_path) if annotations is None else annotations


def _cache(cache: TokenCache | PathLike, annotations: Annotations, where: PathLike) -> TokenCache:
    cache = cache if isinstance(cache, TokenCache) else load_cache(cache)
    cache.check_matches(annotations, where)
    return cache


def _split_records(annotations: Annotations, split: str, where: PathLike) -> list[int]:
    rows = [i for i, r in enumerate(annotations.records) if r.split == split]
    if not rows:
        raise DataError(f"{where}: the annotation table has no records in split {split!r}.")
    return rows


class TrainDataset(Dataset):
    """(image, caption) pairs of a split with two views and an optional weak positive."""

    def __init__(
        self,
        annotations: Annotations | None,
        annotations_path: PathLike,
        cache: TokenCache | PathLike,
        split: str = "train",
        image_size: tuple[int, int] = (384, 384),
        p_weak: float = 0.1,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        resize: str = "pad",
        seed: int = 0,
        flip_p: float = 0.5,
    ) -> None:
        if not 0.0 <= p_weak <= 1.0:
            raise ConfigError(f"p_weak={p_weak}: expected a probability in [0, 1].")
        if not 0.0 <= flip_p <= 1.0:
            raise ConfigError(f"flip_p={flip_p}: expected a probability in [0, 1].")
        self.annotations = _annotations(annotations, annotations_path)
        self.image_root = self.annotations.resolve_image_root(annotations_path)
        self.cache = _cache(cache, self.annotations, annotations_path)
        self.split, self.p_weak, self.flip_p, self.seed = split, float(p_weak), flip_p, seed
        self.transform = ImageTransform(image_size, mean, std, resize)
        self.epoch = 0

        records = self.annotations.records
        rows = set(_split_records(self.annotations, split, annotations_path))
        self.pid_index = person_index(records[i] for i in sorted(rows))
        caption_index, record_index = [], []
        captions_of: dict[int, list[int]] = defaultdict(list)  # record -> its caption indices
        for k, i, _ in self.annotations.captions(split):
            caption_index.append(k)
            record_index.append(i)
            captions_of[i].append(k)
        self.caption_index = np.asarray(caption_index, dtype=np.int64)
        self.record_index = np.asarray(record_index, dtype=np.int64)
        self.pids = np.asarray([self.pid_index[records[i].pid] for i in record_index], np.int64)
        # Weak-positive candidates of each record: captions of the person's OTHER images.
        by_person: dict[int, list[int]] = defaultdict(list)
        for i in sorted(rows):
            by_person[records[i].pid].append(i)
        self.weak_candidates: dict[int, np.ndarray] = {
            i: np.asarray(
                [k for j in by_person[records[i].pid] if j != i for k in captions_of[j]], np.int64
            )
            for i in rows
        }

    def __len__(self) -> int:
        return len(self.caption_index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def num_persons(self) -> int:
        return len(self.pid_index)

    def image_path(self, record: Record) -> Path:
        return self.image_root / record.image

    def _text(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.from_numpy(self.cache.ids[row].astype(np.int64))
        mask = torch.from_numpy(self.cache.mask[row].astype(np.int64))
        return ids, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        u_weak, u_pick, u_flip1, u_flip2 = rng.random(4)
        k = int(self.caption_index[index])
        r = int(self.record_index[index])
        candidates = self.weak_candidates[r]
        replace = len(candidates) > 0 and u_weak < self.p_weak
        k2 = int(candidates[int(u_pick * len(candidates))]) if replace else k

        img = load_image(self.image_path(self.annotations.records[r]))
        view = self.transform.resized(img)
        text1_ids, text1_mask = self._text(k)
        text2_ids, text2_mask = self._text(k2)
        return {
            "image1": view.flip(-1) if u_flip1 < self.flip_p else view,
            "image2": view.flip(-1) if u_flip2 < self.flip_p else view.clone(),
            "text1_ids": text1_ids,
            "text1_mask": text1_mask,
            "text2_ids": text2_ids,
            "text2_mask": text2_mask,
            "replace": torch.tensor(int(replace), dtype=torch.int64),
            "pid": torch.tensor(int(self.pids[index]), dtype=torch.int64),
            "caption_index": torch.tensor(k, dtype=torch.int64),
            "text2_caption_index": torch.tensor(k2, dtype=torch.int64),
        }


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of samples; trim each ``*_ids``/``*_mask`` pair to its longest caption."""
    out = {key: torch.stack([b[key] for b in batch]) for key in batch[0]}
    for key in list(out):
        if key.endswith("_ids") and f"{key[:-4]}_mask" in out:
            mask_key = f"{key[:-4]}_mask"
            length = max(int(out[mask_key].sum(1).max()), 1)
            out[key] = out[key][:, :length].contiguous()
            out[mask_key] = out[mask_key][:, :length].contiguous()
    return out


class ImageDataset(Dataset):
    """The gallery of a split (records in table order), resized without randomness.

    Items: ``image`` (3×H×W float32), ``pid`` (dense person index over the split, as in
    :func:`split_captions`), ``index`` (position in this gallery), ``record_index``.
    """

    def __init__(
        self,
        annotations: Annotations | None,
        annotations_path: PathLike,
        split: str = "test",
        image_size: tuple[int, int] = (384, 384),
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        resize: str = "pad",
    ) -> None:
        self.annotations = _annotations(annotations, annotations_path)
        self.image_root = self.annotations.resolve_image_root(annotations_path)
        self.split = split
        self.transform = ImageTransform(image_size, mean, std, resize)
        self.record_indices = _split_records(self.annotations, split, annotations_path)
        records = [self.annotations.records[i] for i in self.record_indices]
        self.pid_index = person_index(records)
        self.pids = torch.tensor([self.pid_index[r.pid] for r in records], dtype=torch.int64)
        self.image_paths = [self.image_root / r.image for r in records]

    def __len__(self) -> int:
        return len(self.record_indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.transform(load_image(self.image_paths[index])),
            "pid": self.pids[index],
            "index": torch.tensor(index, dtype=torch.int64),
            "record_index": torch.tensor(self.record_indices[index], dtype=torch.int64),
        }


@dataclass
class SplitCaptions:
    """The query captions of a split, trimmed to the split's longest caption."""

    ids: torch.Tensor  # int64 (N, L)
    mask: torch.Tensor  # int64 (N, L)
    pids: torch.Tensor  # int64 (N,) dense person index over the split (ImageDataset's)
    caption_indices: torch.Tensor  # int64 (N,) flat caption index (token cache row)
    record_indices: torch.Tensor  # int64 (N,) record of the caption's own image
    image_positions: torch.Tensor  # int64 (N,) position of that image in ImageDataset

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def split_captions(
    annotations: Annotations | None,
    annotations_path: PathLike,
    cache: TokenCache | PathLike,
    split: str = "test",
) -> SplitCaptions:
    """Token ids, masks and person indices of a split's captions, from the cache."""
    annotations = _annotations(annotations, annotations_path)
    cache = _cache(cache, annotations, annotations_path)
    gallery = _split_records(annotations, split, annotations_path)
    position = {r: p for p, r in enumerate(gallery)}
    pid_index = person_index(annotations.records[i] for i in gallery)
    rows = [(k, i) for k, i, _ in annotations.captions(split)]
    if not rows:
        raise DataError(f"{annotations_path}: split {split!r} has no captions.")
    ks = np.asarray([k for k, _ in rows], dtype=np.int64)
    rs = [i for _, i in rows]
    mask = cache.mask[ks]
    length = max(int(mask.sum(1).max()), 1)
    return SplitCaptions(
        ids=torch.from_numpy(cache.ids[ks, :length].astype(np.int64)),
        mask=torch.from_numpy(mask[:, :length].astype(np.int64)),
        pids=torch.tensor([pid_index[annotations.records[i].pid] for i in rs], dtype=torch.int64),
        caption_indices=torch.from_numpy(ks),
        record_indices=torch.tensor(rs, dtype=torch.int64),
        image_positions=torch.tensor([position[i] for i in rs], dtype=torch.int64),
    )
