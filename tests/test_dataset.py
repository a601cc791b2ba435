"""TrainDataset / collate / ImageDataset / split_captions on a tiny generated dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rasa.data.annotations import Annotations, Record
from rasa.data.dataset import ImageDataset, TrainDataset, collate, split_captions
from rasa.data.token_cache import build_cache
from rasa.data.transforms import MEAN, STD, ImageTransform, fitted_size, resize_image
from rasa.errors import ConfigError, DataError

SIZE = (16, 8)  # (H, W)

# person 10: two images (weak positives possible); person 11: one image; person 12: 3 images
TRAIN = [
    ("p10_a.png", 10, ("a man in a red coat", "red coat and black shoes")),
    ("p10_b.png", 10, ("a man seen from the back",)),
    ("p11_a.png", 11, ("a woman with a long blue dress and a small white bag",)),
    ("p12_a.png", 12, ("a child with a green hat",)),
    ("p12_b.png", 12, ("green hat, yellow shirt", "a small child")),
    ("p12_c.png", 12, ("a child running",)),
]
TEST = [("t20.png", 20, ("a man with a grey bag",)), ("t21.png", 21, ("a woman", "a tall woman"))]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    (root / "imgs").mkdir()
    rng = np.random.default_rng(0)
    recs = []
    for split, rows in (("train", TRAIN), ("test", TEST)):
        for name, pid, caps in rows:
            pixels = rng.integers(0, 256, size=(20, 10, 3), dtype=np.uint8)  # 10 wide, 20 high
            Image.fromarray(pixels).save(root / "imgs" / name)
            recs.append(Record(name, pid, split, caps))
    ann = Annotations("tiny", "imgs", recs)
    ann.save(root / "ann.json")
    build_cache(root / "ann.json", "wordpiece:120", root / "tok.npz", max_len=12, progress=False)
    return root, ann


def make(data, **kw) -> TrainDataset:
    root, ann = data
    kw.setdefault("image_size", SIZE)
    return TrainDataset(ann, root / "ann.json", root / "tok.npz", **kw)


def test_sample_shapes_and_dtypes(data):
    ds = make(data)
    assert len(ds) == 8 and ds.num_persons == 3
    s = ds[0]
    assert s["image1"].shape == s["image2"].shape == (3, *SIZE)
    assert s["image1"].dtype == torch.float32
    for key in ("text1_ids", "text1_mask", "text2_ids", "text2_mask"):
        assert s[key].shape == (12,) and s[key].dtype == torch.int64
    for key in ("replace", "pid", "caption_index"):
        assert s[key].shape == () and s[key].dtype == torch.int64
    assert ds.pids.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]  # dense, order of first appearance
    assert ds.caption_index.tolist() == list(range(8))
    assert not torch.equal(s["image1"], torch.zeros_like(s["image1"]))


def test_deterministic_under_seed_and_epoch(data):
    a, b = make(data, seed=3, p_weak=0.5), make(data, seed=3, p_weak=0.5)
    for i in (0, 4, 7):
        for key, value in a[i].items():
            assert torch.equal(value, b[i][key]), key
    # item order does not matter (workers fetch in any order)
    seq = [a[i]["image1"] for i in range(len(a))]
    rev = [a[i]["image1"] for i in reversed(range(len(a)))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(seq, rev, strict=True))

    def draws(ds, epoch):
        ds.set_epoch(epoch)
        return [
            (
                int(ds[i]["replace"]),
                int(ds[i]["text2_caption_index"]),
                bool(torch.equal(ds[i]["image1"], ds[i]["image2"])),
            )
            for i in range(len(ds))
        ]

    epochs = [draws(a, e) for e in range(6)]
    assert len({tuple(d) for d in epochs}) > 1  # epochs differ
    assert draws(b, 4) == epochs[4]


def test_p_weak_zero_never_replaces(data):
    ds = make(data, p_weak=0.0)
    for e in range(3):
        ds.set_epoch(e)
        for i in range(len(ds)):
            s = ds[i]
            assert int(s["replace"]) == 0
            assert torch.equal(s["text1_ids"], s["text2_ids"])


def test_p_weak_one_replaces_whenever_possible(data):
    root, ann = data
    ds = make(data, p_weak=1.0)
    caption_record = {k: r for k, r, _ in ann.captions()}
    seen = set()
    for e in range(10):
        ds.set_epoch(e)
        for i in range(len(ds)):
            s = ds[i]
            own = caption_record[int(s["caption_index"])]
            if ann.records[own].pid == 11:  # a single image: keeps its own caption
                assert int(s["replace"]) == 0
                assert int(s["text2_caption_index"]) == int(s["caption_index"])
                continue
            assert int(s["replace"]) == 1
            k2 = int(s["text2_caption_index"])
            other = caption_record[k2]
            assert other != own and ann.records[other].pid == ann.records[own].pid
            assert torch.equal(s["text2_ids"], torch.from_numpy(ds.cache.ids[k2]).long())
            seen.add((int(s["caption_index"]), k2))
    assert {k2 for k, k2 in seen if k == 2} == {0, 1}  # both captions of the other image drawn


def test_collate_trims_padding(data):
    ds = make(data, p_weak=0.0)
    batch = collate([ds[i] for i in (1, 3, 6)])
    lengths = torch.from_numpy(ds.cache.mask[[1, 3, 6]].sum(1).astype(np.int64))
    assert batch["text1_ids"].shape == (3, int(lengths.max()))
    assert batch["text1_mask"].sum(1).tolist() == lengths.tolist()
    assert batch["image1"].shape == (3, 3, *SIZE)
    assert batch["pid"].tolist() == [0, 1, 2] and batch["replace"].dtype == torch.int64
    short = collate([ds[i] for i in (6,)])
    assert short["text1_ids"].shape[1] == int(ds.cache.mask[6].sum()) < 12


def test_pad_vs_stretch_geometry():
    img = Image.new("RGB", (10, 20), (255, 0, 0))  # w=10, h=20: tall
    assert fitted_size(10, 20, (16, 16)) == (8, 16)
    padded = np.asarray(resize_image(img, (16, 16), "pad", fill=(0, 0, 255)))
    assert padded.shape == (16, 16, 3)
    assert (padded[:, 4:12] == [255, 0, 0]).all()  # the image, 8 wide, centred
    assert (padded[:, :4] == [0, 0, 255]).all() and (padded[:, 12:] == [0, 0, 255]).all()
    stretched = np.asarray(resize_image(img, (16, 16), "stretch"))
    assert (stretched == [255, 0, 0]).all()
    # after normalisation the padding is (about) zero: it is filled with the mean colour
    x = ImageTransform((16, 16), MEAN, STD, "pad")(img)
    assert x[:, :, :4].abs().max() < 0.01
    red = (torch.tensor([1.0, 0, 0]) - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(x[:, 8, 6], red)
    flipped = ImageTransform((16, 16), resize="pad")(img, flip=True)
    assert torch.equal(flipped, x.flip(-1))
    with pytest.raises(ConfigError, match="resize mode"):
        ImageTransform((16, 16), resize="crop")


def test_eval_datasets_align(data):
    root, ann = data
    gallery = ImageDataset(ann, root / "ann.json", split="test", image_size=SIZE)
    assert len(gallery) == 2 and gallery.pids.tolist() == [0, 1]
    item = gallery[1]
    assert item["image"].shape == (3, *SIZE) and int(item["index"]) == 1
    assert int(item["record_index"]) == 7
    assert torch.equal(gallery[1]["image"], item["image"])  # deterministic
    caps = split_captions(ann, root / "ann.json", root / "tok.npz", split="test")
    assert caps.caption_indices.tolist() == [8, 9, 10]
    assert caps.pids.tolist() == [0, 1, 1] and caps.image_positions.tolist() == [0, 1, 1]
    assert caps.ids.shape[1] == int(caps.mask.sum(1).max()) and caps.ids.dtype == torch.int64
    assert (gallery.pids[caps.image_positions] == caps.pids).all()


def test_clear_errors(data, tmp_path):
    root, ann = data
    recs = list(ann.records)
    recs[0] = Record("gone.png", recs[0].pid, "train", recs[0].captions)
    broken = Annotations("tiny", str(root / "imgs"), recs)
    ds = TrainDataset(broken, tmp_path / "x.json", root / "tok.npz", image_size=SIZE)
    with pytest.raises(DataError, match="gone.png"):
        ds[0]
    with pytest.raises(DataError, match="split 'val'"):
        make(data, split="val")
    with pytest.raises(ConfigError, match="p_weak"):
        make(data, p_weak=1.5)
    other = Annotations("tiny", "imgs", recs[:3])
    with pytest.raises(DataError, match="rasa data tokenize"):
        TrainDataset(other, root / "ann.json", root / "tok.npz")


def test_dataloader_workers_do_not_change_batches(data):
    ds = make(data, p_weak=0.5, seed=1)
    ds.set_epoch(2)
    loaders = [
        torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=w)
        for w in (0, 2)
    ]
    b0, b2 = (list(loader) for loader in loaders)
    for x, y in zip(b0, b2, strict=True):
        for key in x:
            assert torch.equal(x[key], y[key]), key
