"""Every image loader reads a small fixture in its real on-disk format and fails clearly on bad input."""

import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from nht.domains.images import data
from nht.domains.images.data import DatasetError


# ----------------------------------------------------------------------------- fixtures

def _jpeg_bytes(rgb, fmt="JPEG"):
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), rgb, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _add(tar, name, blob):
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def make_cifar_python_archive(path, n_per_batch=4, seed=0):
    """A miniature cifar-10-python.tar.gz in the official pickle format."""
    rng = np.random.default_rng(seed)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            y = rng.integers(0, 10, n_per_batch).tolist()
            batches[name] = (x, y)
            blob = pickle.dumps({b"batch_label": name.encode(), b"labels": y, b"data": x,
                                 b"filenames": [f"{i}.png".encode() for i in range(n_per_batch)]})
            _add(tar, f"cifar-10-batches-py/{name}", blob)
        _add(tar, "cifar-10-batches-py/batches.meta",
             pickle.dumps({b"label_names": [c.encode() for c in data.CIFAR10_CLASSES]}))
    return batches


def make_jpeg_archive(path, classes=data.CIFAR10_CLASSES, per_class=2, as_folder=False):
    """The cifar10-jpeg layout: cifar10-jpeg/{train,test}/<class>/NNNN.jpg, one flat colour per class."""
    colours = {c: (20 * k, 255 - 20 * k, 100) for k, c in enumerate(classes)}
    files = {f"cifar10-jpeg/{split}/{c}/{i:04d}.jpg": _jpeg_bytes(colours[c])
             for split in ("train", "test") for c in classes for i in range(per_class)}
    if as_folder:
        for name, blob in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(blob)
    else:
        with tarfile.open(path, "w:gz") as tar:
            for name, blob in files.items():
                _add(tar, name, blob)
    return colours


# ----------------------------------------------------------------------------- digits

def test_digits_padded_border_outside_digit():
    d = data.load_digits(pad=4)
    assert d["x_train"].shape[1:] == (3, 16, 16) and d["x_train"].dtype == np.uint8
    assert len(d["y_train"]) + len(d["y_test"]) == 1797
    x = np.concatenate([d["x_train"], d["x_test"]])
    assert x[:, :, :4, :].max() == 0 and x[:, :, -4:, :].max() == 0 and x[:, :, :, :4].max() == 0
    assert x.max() == 255
    assert set(np.unique(d["y_test"])) == set(range(10))


# ----------------------------------------------------------------------------- CIFAR-10 official pickle

def test_cifar_python_archive_reads_official_format(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    batches = make_cifar_python_archive(path)
    d = data.load_cifar10_python_archive(path, md5=None)
    assert d["x_train"].shape == (20, 3, 32, 32) and d["x_test"].shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(d["x_train"][:4].reshape(4, -1), batches["data_batch_1"][0])
    np.testing.assert_array_equal(d["y_test"], batches["test_batch"][1])
    assert list(d["classes"]) == list(data.CIFAR10_CLASSES)
    # through the config dispatcher, with an explicit md5
    spec = {"name": "cifar10", "source": "python_archive", "archive": str(path), "md5": data.md5sum(path)}
    assert data.load_dataset(spec)["x_train"].shape == (20, 3, 32, 32)


def test_cifar_python_archive_checks_official_md5(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    make_cifar_python_archive(path)
    with pytest.raises(DatasetError, match="md5"):
        data.load_cifar10_python_archive(path)          # the fixture is not the official file


def test_cifar_python_archive_missing_and_corrupted(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        data.load_cifar10_python_archive(tmp_path / "nope.tar.gz", md5=None)
    bad = tmp_path / "bad.tar.gz"
    make_cifar_python_archive(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DatasetError, match="corrupted|cannot read|missing"):
        data.load_cifar10_python_archive(bad, md5=None)
    incomplete = tmp_path / "incomplete.tar.gz"
    with tarfile.open(incomplete, "w:gz") as tar:
        _add(tar, "cifar-10-batches-py/data_batch_1", pickle.dumps({b"data": b"", b"labels": []}))
    with pytest.raises(DatasetError, match="missing"):
        data.load_cifar10_python_archive(incomplete, md5=None)


# ----------------------------------------------------------------------------- JPEG folder archive

@pytest.mark.parametrize("as_folder", [False, True])
def test_jpeg_archive_layout(tmp_path, as_folder):
    path = tmp_path / ("cifar10-jpeg" if as_folder else "cifar10-jpeg.tar.gz")
    if as_folder:
        path.mkdir()
    colours = make_jpeg_archive(path, as_folder=as_folder)
    d = data.load_dataset({"name": "cifar10", "source": "local_archive", "archive": str(path)})
    assert d["x_train"].shape == (20, 3, 32, 32) and d["x_test"].shape == (20, 3, 32, 32)
    assert list(d["y_train"]) == [k for k in range(10) for _ in range(2)]
    for k, c in enumerate(data.CIFAR10_CLASSES):        # class index = official CIFAR-10 order
        pix = d["x_train"][d["y_train"] == k][0, :, 16, 16].astype(int)
        assert np.abs(pix - np.array(colours[c])).max() <= 6   # lossy JPEG


def test_jpeg_archive_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found.*train,test"):
        data.load_image_folder_archive(tmp_path / "missing.tar.gz")
    path = tmp_path / "a.tar.gz"
    make_jpeg_archive(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetError, match="corrupted|no images"):
        data.load_image_folder_archive(path)
    bad_img = tmp_path / "badimg.tar.gz"
    with tarfile.open(bad_img, "w:gz") as tar:
        _add(tar, "x/train/cat/0.jpg", b"not a jpeg")
        _add(tar, "x/test/cat/0.jpg", _jpeg_bytes((1, 2, 3)))
    with pytest.raises(DatasetError, match="cannot decode image 'x/train/cat/0.jpg'"):
        data.load_image_folder_archive(bad_img)
    wrong = tmp_path / "wrong.tar.gz"
    with tarfile.open(wrong, "w:gz") as tar:
        for s in ("train", "test"):
            _add(tar, f"{s}/zebra/0.jpg", _jpeg_bytes((1, 2, 3)))
    with pytest.raises(DatasetError, match="unexpected class folders"):
        data.load_image_folder_archive(wrong)


# ----------------------------------------------------------------------------- CelebA

def make_celeba(root, n=12):
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    names = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Smiling"]
    lines = [str(n), " ".join(names)]
    parts = []
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(n):
        f = f"{i + 1:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(base / "img_align_celeba" / f)
        vals = [int(v) for v in rng.choice([-1, 1], len(names))]
        truth[f] = dict(zip(names, vals))
        lines.append(f + "  " + " ".join(f"{v:2d}" for v in vals))
        parts.append(f"{f} {0 if i < 8 else (1 if i < 10 else 2)}")
    (base / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (base / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return truth


def test_celeba_layout(tmp_path):
    truth = make_celeba(tmp_path)
    d = data.load_dataset({"name": "celeba", "source": "folder", "root": str(tmp_path), "image_size": 16,
                           "target_attr": "Blond_Hair", "spurious_attr": "Male"})
    assert d["x_train"].shape == (8, 3, 16, 16) and d["x_test"].shape == (2, 3, 16, 16)
    train_files = [f"{i + 1:06d}.jpg" for i in range(8)]
    assert list(d["y_train"]) == [int(truth[f]["Blond_Hair"] > 0) for f in train_files]
    assert list(d["a_train"]) == [int(truth[f]["Male"] > 0) for f in train_files]


def test_celeba_errors(tmp_path):
    with pytest.raises(DatasetError, match="img_align_celeba"):
        data.load_celeba(tmp_path)
    make_celeba(tmp_path)
    with pytest.raises(DatasetError, match="no attribute 'Wings'"):
        data.load_celeba(tmp_path, target_attr="Wings")
    (tmp_path / "celeba" / "img_align_celeba" / "000011.jpg").unlink()
    with pytest.raises(DatasetError, match="CelebA image not found"):
        data.load_celeba(tmp_path)


# ----------------------------------------------------------------------------- Waterbirds

def make_waterbirds(root):
    rows = ["img_id,img_filename,y,split,place,place_filename"]
    rng = np.random.default_rng(1)
    for i in range(10):
        f = f"{i:03d}.Bird/img_{i}.jpg"
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / f)
        rows.append(f"{i},{f},{i % 2},{0 if i < 6 else (1 if i < 8 else 2)},{(i // 2) % 2},/x/y.jpg")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")


def test_waterbirds_layout(tmp_path):
    make_waterbirds(tmp_path)
    d = data.load_dataset({"name": "waterbirds", "source": "folder", "root": str(tmp_path), "image_size": 8})
    assert d["x_train"].shape == (6, 3, 8, 8) and d["x_test"].shape == (2, 3, 8, 8)
    assert list(d["y_train"]) == [0, 1, 0, 1, 0, 1] and list(d["a_train"]) == [0, 0, 1, 1, 0, 0]
    assert list(d["y_test"]) == [0, 1] and list(d["a_test"]) == [0, 0]


def test_waterbirds_errors(tmp_path):
    with pytest.raises(DatasetError, match="metadata.csv.*img_filename, y, place, split"):
        data.load_waterbirds(tmp_path)
    make_waterbirds(tmp_path)
    (tmp_path / "metadata.csv").write_text("img_filename,y\na.jpg,1\n")
    with pytest.raises(DatasetError, match="missing columns"):
        data.load_waterbirds(tmp_path)
    make_waterbirds(tmp_path)
    (tmp_path / "008.Bird" / "img_8.jpg").write_bytes(b"\x00\x01corrupt")
    with pytest.raises(DatasetError, match="cannot decode image"):
        data.load_waterbirds(tmp_path)


def test_npz_roundtrip_and_corrupted(tmp_path):
    d = data.load_digits()
    data.save_npz(d, tmp_path / "d.npz")
    back = data.load_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(back["x_train"], d["x_train"])
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(DatasetError, match="cannot read the dataset file"):
        data.load_npz(tmp_path / "bad.npz")
    with pytest.raises(DatasetError, match="not found"):
        data.load_npz(tmp_path / "none.npz")
