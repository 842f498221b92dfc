"""CIFAR-10 data: the binary reader, the download (against a local HTTP server),
safe unpacking, the augmentations (checked against Pillow where it has the op),
and the batch iterator's determinism and resumption."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

try:  # Pillow (a dependency of matplotlib) is the reference for the colour ops
    from PIL import Image, ImageEnhance, ImageOps
except ImportError:
    Image = ImageEnhance = ImageOps = None

from tinyvit import backend
from tinyvit import data as D
from tinyvit.data import DataError

RECORDS = 20  # records per file in the small data sets made here
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-batches-bin"


# ---------------------------------------------------------------------------
# Small data sets in the official layout
# ---------------------------------------------------------------------------


def batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Records of one label byte followed by the 3,072 pixel bytes (R, G, B planes)."""
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], 1)
    return records.tobytes()


def small_dataset(seed=0, records=RECORDS):
    """{file name: (images, labels)} for the six batch files."""
    rng = np.random.default_rng(seed)
    files = {}
    for name in (*D.TRAIN_FILES, D.TEST_FILE):
        images = rng.integers(0, 256, (records, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, records)
        files[name] = (images, labels)
    return files


def write_folder(folder: Path, files) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in files.items():
        (folder / name).write_bytes(batch_bytes(images, labels))
    (folder / D.META_FILE).write_text("\n".join(D.CLASSES) + "\n\n\n")  # blank lines follow
    return folder


@pytest.fixture
def files():
    return small_dataset()


@pytest.fixture
def folder(tmp_path, files):
    return write_folder(tmp_path / D.FOLDER, files)


def archive_bytes(files, extra=()) -> bytes:
    """A .tar.gz like the official one: ``cifar-10-batches-bin/`` and its files (+ ``extra``)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        entry = tarfile.TarInfo(D.FOLDER)
        entry.type = tarfile.DIRTYPE
        tar.addfile(entry)
        contents = {name: batch_bytes(*arrays) for name, arrays in files.items()}
        contents[D.META_FILE] = ("\n".join(D.CLASSES) + "\n").encode()
        for name, content in contents.items():
            entry = tarfile.TarInfo(f"{D.FOLDER}/{name}")
            entry.size = len(content)
            tar.addfile(entry, io.BytesIO(content))
        for entry, content in extra:
            tar.addfile(entry, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def test_records_decode_to_channels_in_row_major_order(tmp_path):
    planes = np.stack([np.full(1024, 1), np.full(1024, 2), np.full(1024, 3)])  # R, G, B
    ramp = np.stack([np.arange(1024) % 251, np.zeros(1024), np.zeros(1024)])
    raw = np.array([[7, *planes.ravel()], [4, *ramp.ravel()]], dtype=np.uint8)
    path = tmp_path / "two.bin"
    path.write_bytes(raw.tobytes())

    images, labels = D.read_batch(path, records=2)
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    assert labels.tolist() == [7, 4] and labels.dtype == np.int64
    assert [int(images[0, c].min()) for c in range(3)] == [1, 2, 3]
    assert [int(images[0, c].max()) for c in range(3)] == [1, 2, 3]
    assert images[1, 0, 0, 5] == 5 and images[1, 0, 1, 0] == 32  # row 1 starts at byte 32
    assert images[1, 0, 3, 7] == (3 * 32 + 7) % 251
    assert np.array_equal(D.read_batch(path, records=None)[0], images)  # any whole count


def test_load_reads_the_official_layout(tmp_path, folder, files, monkeypatch):
    for root in (tmp_path, folder):  # the parent folder, or the batch folder itself
        data = D.load_cifar10(root, download=False, records=RECORDS)
        x_train, y_train, x_test, y_test, classes = data  # unpacks as a 5-tuple
        assert x_train.shape == (5 * RECORDS, 3, 32, 32) and x_train.dtype == np.uint8
        assert x_test.shape == (RECORDS, 3, 32, 32) and x_test.dtype == np.uint8
        assert y_train.dtype == y_test.dtype == np.int64
        assert classes == D.CLASSES and isinstance(classes, tuple)
        assert np.array_equal(
            x_train[RECORDS:], np.concatenate([files[f][0] for f in D.TRAIN_FILES[1:]])
        )
        assert np.array_equal(y_test, files[D.TEST_FILE][1])

    monkeypatch.setenv("TINYVIT_DATA", str(tmp_path))
    assert D.default_root() == tmp_path
    assert D.load_cifar10(download=False, records=RECORDS).x_test.shape[0] == RECORDS
    monkeypatch.delenv("TINYVIT_DATA")
    assert D.default_root() == Path.home() / ".cache" / "tinyvit"


def test_a_truncated_batch_file_is_named_with_its_size(folder):
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    size = RECORDS * D.RECORD_BYTES - 100
    with pytest.raises(DataError, match=f"{path}.*{size:,} bytes.*expected {RECORDS * 3073:,}"):
        D.load_cifar10(folder, download=False, records=RECORDS)
    # The real loader insists on full files of 30,730,000 bytes.
    with pytest.raises(DataError, match=r"data_batch_1.bin has 61,460 bytes, expected 30,730,000"):
        D.load_cifar10(folder, download=False)


def test_a_missing_batch_file_is_named(folder):
    (folder / D.TEST_FILE).unlink()
    with pytest.raises(
        DataError,
        match=f"missing CIFAR-10 batch file {folder / D.TEST_FILE} \\({RECORDS * 3073:,} bytes",
    ):
        D.load_cifar10(folder.parent, records=RECORDS)  # a folder that exists is never downloaded


def test_no_data_and_no_download_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as info:
        D.load_cifar10(tmp_path, download=False)
    assert str(tmp_path / D.FOLDER) in str(info.value) and "TINYVIT_DATA" in str(info.value)


def test_labels_beyond_the_class_list_are_refused(folder):
    (folder / D.META_FILE).write_text("cat\ndog\n")
    with pytest.raises(DataError, match="names only 2 classes"):
        D.load_cifar10(folder, records=RECORDS)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no offline CIFAR-10 at {SHARED}")
def test_the_real_data_set():
    x_train, y_train, x_test, y_test, classes = D.load_cifar10(SHARED.parent, download=False)
    assert x_train.shape == (50000, 3, 32, 32) and x_test.shape == (10000, 3, 32, 32)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert y_train.dtype == y_test.dtype == np.int64
    assert np.bincount(y_train).tolist() == [5000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert classes == D.CLASSES


# ---------------------------------------------------------------------------
# Downloading, against an HTTP server on 127.0.0.1
# ---------------------------------------------------------------------------


@pytest.fixture
def server(monkeypatch):
    """Serves ``state.files`` with Range support; logs (path, Range header, status)."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    state = SimpleNamespace(files={}, log=[], ignore_range=False, cut=None)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = state.files.get(self.path)
            wanted = self.headers.get("Range")
            if body is None:
                state.log.append((self.path, wanted, 404))
                self.send_error(404)
                return
            start = 0
            if wanted and not state.ignore_range:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
            status = 206 if start else 200
            if start >= len(body):  # nothing there to send
                status = 416
            state.log.append((self.path, wanted, status))
            if status == 416:
                self.send_error(416)
                return
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            cut, state.cut = state.cut, None  # drop the connection early, once
            self.wfile.write(body[start:cut])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/cifar-10-binary.tar.gz"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def serve(server, files):
    blob = archive_bytes(files)
    server.files["/cifar-10-binary.tar.gz"] = blob
    return dict(url=server.url, size=len(blob), md5=hashlib.md5(blob).hexdigest(), progress=False)


def leftovers(root: Path):
    """Anything the download or the unpacking left besides the folder and the archive."""
    return sorted(p.name for p in root.iterdir() if p.name not in (D.FOLDER, D.ARCHIVE))


def test_download_verify_unpack_and_load(tmp_path, server, files, monkeypatch):
    options = serve(server, files)
    real = D.download_cifar10
    monkeypatch.setattr(D, "download_cifar10", lambda root: real(root, **options))
    data = D.load_cifar10(tmp_path, records=RECORDS)  # the folder is missing: download it
    assert np.array_equal(data.x_train[:RECORDS], files["data_batch_1.bin"][0])
    assert (tmp_path / D.ARCHIVE).stat().st_size == options["size"]
    assert leftovers(tmp_path) == []  # no .part, no half-unpacked folder
    assert [status for _, _, status in server.log] == [200]
    assert real(tmp_path, **options) == tmp_path / D.FOLDER and len(server.log) == 1  # done


def test_a_partial_download_resumes_with_a_range_request(tmp_path, server, files):
    options = serve(server, files)
    blob = server.files["/cifar-10-binary.tar.gz"]
    (tmp_path / (D.ARCHIVE + ".part")).write_bytes(blob[:1000])
    folder = D.download_cifar10(tmp_path, **options)
    assert server.log == [("/cifar-10-binary.tar.gz", "bytes=1000-", 206)]
    assert (tmp_path / D.ARCHIVE).read_bytes() == blob
    assert D.load_cifar10(folder, download=False, records=RECORDS).y_test.shape == (RECORDS,)


def test_a_dropped_connection_keeps_the_part_for_the_next_try(tmp_path, server, files):
    options = serve(server, files)
    server.cut = 700  # the first answer stops after 700 of its bytes
    with pytest.raises(DataError, match="resume"):
        D.download_cifar10(tmp_path, **options)
    assert (tmp_path / (D.ARCHIVE + ".part")).stat().st_size == 700
    D.download_cifar10(tmp_path, **options)
    assert server.log[-1] == ("/cifar-10-binary.tar.gz", "bytes=700-", 206)
    assert leftovers(tmp_path) == []


def test_a_server_that_ignores_range_starts_over(tmp_path, server, files):
    options = serve(server, files)
    server.ignore_range = True
    (tmp_path / (D.ARCHIVE + ".part")).write_bytes(b"junk from another file" * 10)
    D.download_cifar10(tmp_path, **options)
    assert server.log[0][1:] == ("bytes=220-", 200)
    assert (tmp_path / D.ARCHIVE).read_bytes() == server.files["/cifar-10-binary.tar.gz"]


def _assert_set_aside(root: Path):
    bad = [p.name for p in root.iterdir() if ".bad-" in p.name]
    assert len(bad) == 1 and bad[0].startswith(D.ARCHIVE + ".bad-"), bad
    assert not (root / D.FOLDER).exists() and not (root / D.ARCHIVE).exists()
    assert leftovers(root) == bad  # no .part, nothing unpacked
    with pytest.raises(DataError):  # and the bad archive is never used
        D.load_cifar10(root, download=False, records=RECORDS)


def test_a_wrong_md5_is_set_aside_and_not_unpacked(tmp_path, server, files):
    options = serve(server, files)
    options["md5"] = "0" * 32
    with pytest.raises(DataError, match=f"MD5 [0-9a-f]{{32}} where {'0' * 32} was expected"):
        D.download_cifar10(tmp_path, **options)
    _assert_set_aside(tmp_path)


@pytest.mark.parametrize("delta", [+1, -1])
def test_a_wrong_size_is_set_aside(tmp_path, server, files, delta):
    options = serve(server, files)
    real_size, options["size"] = options["size"], options["size"] + delta
    expected = f"{real_size:,} bytes where {real_size + delta:,} were expected"
    with pytest.raises(DataError, match=expected):
        D.download_cifar10(tmp_path, **options)
    _assert_set_aside(tmp_path)


def test_a_whole_part_that_is_too_short_is_judged_not_refetched(tmp_path, server, files):
    options = serve(server, files)  # a .part that holds the whole file the server has,
    (tmp_path / (D.ARCHIVE + ".part")).write_bytes(server.files["/cifar-10-binary.tar.gz"])
    options["size"] += 10  # but the release is meant to be longer: the server answers 416
    with pytest.raises(DataError, match="where .* were expected"):
        D.download_cifar10(tmp_path, **options)
    assert [status for _, _, status in server.log] == [416]
    _assert_set_aside(tmp_path)


def test_no_network_says_where_to_put_the_files(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError) as info:
        D.download_cifar10(tmp_path, url=f"http://127.0.0.1:{port}/x.tar.gz", progress=False)
    message = str(info.value)
    assert "could not download" in message and str(tmp_path / D.FOLDER) in message
    assert D.FOLDER in message and "TINYVIT_DATA" in message and "root" in message


# ---------------------------------------------------------------------------
# Unpacking only what is safe
# ---------------------------------------------------------------------------


def _entry(name, kind=tarfile.REGTYPE, content=b"x", link=""):
    entry = tarfile.TarInfo(name)
    entry.type = kind
    entry.linkname = link
    entry.size = len(content) if kind == tarfile.REGTYPE else 0
    return entry, content if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize(
    "name",
    ["../evil", f"{D.FOLDER}/../../evil", "{tmp}/evil", f"{D.FOLDER}/../x/../../evil"],
)
def test_an_entry_that_escapes_the_folder_is_refused(tmp_path, files, name):
    name = name.format(tmp=tmp_path)  # an absolute path, in a folder of this test's own
    root = tmp_path / "root"
    root.mkdir()
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(archive_bytes(files, extra=[_entry(name)]))
    with pytest.raises(DataError, match=f"{name!r}.*outside"):
        D.extract_cifar10(archive, root)
    assert list(root.iterdir()) == []  # nothing unpacked, no staging folder left
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize(
    "kind,link,what",
    [
        (tarfile.SYMTYPE, "/etc/passwd", "symbolic link"),
        (tarfile.LNKTYPE, f"{D.FOLDER}/test_batch.bin", "hard link"),
        (tarfile.CHRTYPE, "", "device"),
    ],
)
def test_links_and_devices_are_refused(tmp_path, files, kind, link, what):
    root = tmp_path / "root"
    root.mkdir()
    archive = tmp_path / "links.tar.gz"
    name = f"{D.FOLDER}/data_batch_9.bin"
    archive.write_bytes(archive_bytes(files, extra=[_entry(name, kind, link=link)]))
    with pytest.raises(DataError, match=f"{name!r}, a {what}"):
        D.extract_cifar10(archive, root)
    assert list(root.iterdir()) == []


def test_a_file_that_is_no_archive(tmp_path):
    archive = tmp_path / D.ARCHIVE
    archive.write_bytes(b"<html>Service unavailable</html>")
    with pytest.raises(DataError, match="could not unpack"):
        D.extract_cifar10(archive, tmp_path)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# Augmentations (on NumPy, and on CuPy where a GPU is present)
# ---------------------------------------------------------------------------


def images_on(xp, n=8, seed=0, size=32):
    return xp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), np.uint8))


def host(a):
    return backend.to_numpy(a)


def test_normalize(xp):
    x = images_on(xp)
    out = D.normalize(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    mean, std = np.array(D.MEAN).reshape(1, 3, 1, 1), np.array(D.STD).reshape(1, 3, 1, 1)
    assert np.allclose(host(out), (host(x) / 255 - mean) / std, atol=1e-5)
    assert D.normalize(x, dtype=np.float64).dtype == np.float64


def test_random_crop_takes_real_windows_of_the_padded_image(xp):
    x = images_on(xp, n=6)
    out = D.random_crop(x, 4, np.random.default_rng(3))
    assert out.shape == x.shape and out.dtype == np.uint8
    padded = np.pad(host(x), ((0, 0), (0, 0), (4, 4), (4, 4)))
    offsets = []
    for b in range(6):
        found = [
            (i, j)
            for i in range(9)
            for j in range(9)
            if np.array_equal(host(out)[b], padded[b, :, i : i + 32, j : j + 32])
        ]
        assert len(found) == 1, f"image {b}: not one window of the padded image"
        offsets += found
    assert len(set(offsets)) > 1  # the windows differ from image to image
    again = D.random_crop(x, 4, np.random.default_rng(3))
    assert np.array_equal(host(again), host(out))
    assert not np.array_equal(host(D.random_crop(x, 4, np.random.default_rng(4))), host(out))


def test_horizontal_flip_mirrors_some_images(xp):
    x = images_on(xp, n=32)
    out = host(D.horizontal_flip(x, np.random.default_rng(0)))
    mirrored = [np.array_equal(o, i[..., ::-1]) for o, i in zip(out, host(x))]
    kept = [np.array_equal(o, i) for o, i in zip(out, host(x))]
    assert all(m != k for m, k in zip(mirrored, kept)) and 0 < sum(mirrored) < 32
    assert np.array_equal(
        host(D.horizontal_flip(x, np.random.default_rng(0), p=1.0)), host(x)[..., ::-1]
    )
    assert np.array_equal(host(D.horizontal_flip(x, np.random.default_rng(0), p=0.0)), host(x))


def test_rand_augment_keeps_shape_and_dtype_and_follows_its_seed(xp):
    x = images_on(xp, n=16)
    out = D.rand_augment(x, np.random.default_rng(5))
    assert out.shape == x.shape and out.dtype == np.uint8
    assert np.array_equal(host(D.rand_augment(x, np.random.default_rng(5))), host(out))
    assert not np.array_equal(host(D.rand_augment(x, np.random.default_rng(6))), host(out))
    assert not np.array_equal(host(out), host(x))
    every = D.rand_augment(x, np.random.default_rng(0), num_ops=3, magnitude=30)
    assert every.shape == x.shape and every.dtype == np.uint8


def test_rand_augment_with_only_identity_changes_nothing(xp):
    x = images_on(xp)
    out = D.rand_augment(x, np.random.default_rng(0), num_ops=3, ops=["identity"])
    assert np.array_equal(host(out), host(x))


def test_rand_augment_refuses_bad_arguments(xp):
    x = images_on(xp)
    with pytest.raises(ValueError, match="unknown RandAugment ops"):
        D.rand_augment(x, np.random.default_rng(0), ops=["cutout"])
    with pytest.raises(ValueError, match="magnitude 31"):
        D.rand_augment(x, np.random.default_rng(0), magnitude=31)
    with pytest.raises(TypeError, match="uint8"):
        D.rand_augment(x.astype(np.float32), np.random.default_rng(0))


ENHANCE = ("brightness", "color", "contrast", "sharpness")  # Pillow's ImageEnhance classes
PILLOW_CASES = [("equalize",), ("autocontrast",), ("solarize", 100), ("posterize", 3)] + [
    (op, factor) for op in ENHANCE for factor in (0.0, 0.37, 1.0, 1.81)
]


def pillow(op, image, *args):
    """The same op through Pillow, on one (H, W, 3) image."""
    if op in ENHANCE:
        return getattr(ImageEnhance, op.capitalize())(image).enhance(*args)
    return getattr(ImageOps, op)(image, *args)


@pytest.mark.skipif(Image is None, reason="Pillow is not installed")
@pytest.mark.parametrize("case", PILLOW_CASES, ids=lambda case: "-".join(map(str, case)))
def test_colour_ops_match_pillow_exactly(xp, case):
    op, *args = case
    x = images_on(xp, n=4, size=12)
    x[1] = x[1] // 4 + 100  # a low-contrast image, and a flat one
    x[2] = 77
    out = getattr(D, op)(x, *args)
    assert out.dtype == np.uint8
    expected = [
        np.asarray(pillow(op, Image.fromarray(im.transpose(1, 2, 0)), *args)) for im in host(x)
    ]
    assert np.array_equal(host(out), np.stack(expected).transpose(0, 3, 1, 2))


def test_neutral_arguments_leave_images_alone(xp):
    x = images_on(xp)
    for out in (
        D.brightness(x, 1.0),
        D.color(x, 1.0),
        D.contrast(x, 1.0),
        D.sharpness(x, 1.0),
        D.posterize(x, 8),
        D.solarize(x, 256),
        D.rotate(x, 0.0),
        D.shear_x(x, 0.0),
        D.shear_y(x, 0.0),
        D.translate_x(x, 0),
        D.translate_y(x, 0),
    ):
        assert out.dtype == np.uint8 and np.array_equal(host(out), host(x))


def test_geometric_ops_move_pixels_where_they_say(xp):
    x = images_on(xp)
    assert np.array_equal(host(D.rotate(x, 90)), np.rot90(host(x), 1, axes=(2, 3)))  # counter-
    assert np.array_equal(host(D.rotate(x, -90)), np.rot90(host(x), -1, axes=(2, 3)))  # clockwise
    right = host(D.translate_x(x, 3, fill=9))
    assert np.array_equal(right[..., 3:], host(x)[..., :-3]) and (right[..., :3] == 9).all()
    up = host(D.translate_y(x, -2))
    assert np.array_equal(up[:, :, :-2], host(x)[:, :, 2:]) and (up[:, :, -2:] == 0).all()
    sheared = host(D.shear_x(x, 0.25))  # the row 4 below the centre row moves 1 pixel right
    assert np.array_equal(sheared[:, :, 20, 1:], host(x)[:, :, 20, :-1])
    per_image = host(D.translate_x(x, np.arange(8)))  # one shift per image
    assert all(np.array_equal(per_image[b, ..., b:], host(x)[b, ..., : 32 - b]) for b in range(8))


def _recover_partners(targets, labels):
    """(partner index, lam) per row, read off the targets of distinct labels."""
    partners, lams = [], []
    for b, row in enumerate(targets):
        lam = row[labels[b]]
        others = np.flatnonzero((row > 1e-6) & (np.arange(len(row)) != labels[b]))
        partners.append(int(np.flatnonzero(labels == others[0])[0]) if len(others) else b)
        lams.append(lam)
    return partners, np.array(lams)


def test_mixup_mixes_images_and_targets_alike(xp):
    x = D.normalize(images_on(xp, n=10))
    labels = xp.asarray(np.arange(10))  # distinct labels: the targets tell each partner
    mixed, targets = D.mixup(x, labels, 0.4, np.random.default_rng(1), num_classes=10)
    assert mixed.dtype == np.float32 and targets.dtype == np.float32
    assert targets.shape == (10, 10)
    assert np.allclose(host(targets).sum(axis=1), 1.0)
    partners, lams = _recover_partners(host(targets), np.arange(10))
    for b, (j, lam) in enumerate(zip(partners, lams)):
        expected = host(x)[b] if j == b else lam * host(x)[b] + (1 - lam) * host(x)[j]
        assert np.allclose(host(mixed)[b], expected, atol=1e-5)
    with pytest.raises(TypeError, match="float"):
        D.mixup(images_on(xp), labels[:8], 0.4, np.random.default_rng(1))


def test_cutmix_pastes_a_box_and_weighs_targets_by_its_area(xp):
    x = D.normalize(images_on(xp, n=10))
    labels = xp.asarray(np.arange(10))
    for seed in range(5):
        out, targets = D.cutmix(x, labels, 1.0, np.random.default_rng(seed), num_classes=10)
        assert out.dtype == np.float32 and targets.shape == (10, 10)
        assert np.allclose(host(targets).sum(axis=1), 1.0)
        partners, lams = _recover_partners(host(targets), np.arange(10))
        for b, (j, lam) in enumerate(zip(partners, lams)):
            own = (host(out)[b] == host(x)[b]).all(axis=0)  # (H, W) pixels still its own
            if j != b:
                assert np.isclose(own.mean(), lam, atol=1e-6)
                assert np.array_equal(host(out)[b][:, ~own], host(x)[j][:, ~own])


def test_one_hot_and_soft_labels(xp):
    labels = xp.asarray(np.array([2, 0, 1]))
    assert np.array_equal(host(D.one_hot(labels, 3)), np.eye(3, dtype=np.float32)[[2, 0, 1]])
    soft = xp.asarray(np.full((4, 3), 1 / 3, np.float32))
    _, targets = D.mixup(D.normalize(images_on(xp, n=4)), soft, 1.0, np.random.default_rng(0), 3)
    assert np.allclose(host(targets), 1 / 3)


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------


@pytest.fixture
def toy():
    """50 images whose labels are their own indices (so each example can be traced)."""
    x = np.random.default_rng(0).integers(0, 256, (50, 3, 32, 32), np.uint8)
    return x, np.arange(50)


def collect(iterator):
    return [(host(images), host(targets)) for images, targets in iterator]


def same(a, b):
    return len(a) == len(b) and all(
        np.array_equal(x1, x2) and np.array_equal(t1, t2) for (x1, t1), (x2, t2) in zip(a, b)
    )


@pytest.mark.parametrize("augment", ["flip", "basic", "randaugment"])
def test_same_seed_same_batches(toy, device, augment):
    x, y = toy

    def run(**kw):
        return collect(D.batches(x, y, 8, augment=augment, num_classes=50, device=device, **kw))

    first = run(seed=1, epoch=2)
    assert len(first) == 6 and same(first, run(seed=1, epoch=2))
    assert not same(first, run(seed=2, epoch=2)) and not same(first, run(seed=1, epoch=3))
    images, targets = first[0]
    assert images.shape == (8, 3, 32, 32) and images.dtype == np.float32
    assert targets.shape == (8,) and targets.dtype == np.int64


def test_resuming_at_batch_k_sees_the_same_batches(toy, device):
    x, y = toy
    kw = dict(seed=3, epoch=1, augment="randaugment", mixup=0.8, cutmix=1.0, num_classes=50)
    whole = collect(D.batches(x, y, 8, device=device, **kw))
    for start in (0, 2, 5, 6):
        assert same(collect(D.batches(x, y, 8, device=device, start=start, **kw)), whole[start:])


def test_every_example_once_per_epoch(toy):
    x, y = toy
    seen = np.concatenate([t for _, t in collect(D.batches(x, y, 8, seed=0, augment="none"))])
    assert len(seen) == 48 and len(set(seen.tolist())) == 48  # 2 dropped with the last batch
    images, labels = collect(D.batches(x, y, 8, seed=0, augment="none"))[0]
    assert np.array_equal(images, D.normalize(x[labels]))  # images travel with their labels


def test_evaluation_covers_everything_in_order(toy, device):
    x, y = toy
    out = collect(
        D.batches(x, y, 16, shuffle=False, augment="none", drop_last=False, device=device)
    )
    assert [len(t) for _, t in out] == [16, 16, 16, 2]
    assert np.array_equal(np.concatenate([t for _, t in out]), y)
    assert np.array_equal(np.concatenate([i for i, _ in out]), D.normalize(x))
    assert D.num_batches(50, 16, drop_last=False) == 4 and D.num_batches(50, 16) == 3


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_batches_have_probability_targets(toy, device, mixup, cutmix):
    x, y = toy
    for images, targets in collect(
        D.batches(x, y, 10, mixup=mixup, cutmix=cutmix, num_classes=50, device=device)
    ):
        assert images.dtype == np.float32 and targets.dtype == np.float32
        assert targets.shape == (10, 50) and np.allclose(targets.sum(axis=1), 1.0)


def test_batches_refuse_bad_arguments(toy):
    x, y = toy
    with pytest.raises(ValueError, match="'fancy'"):
        D.batches(x, y, 8, augment="fancy")
    with pytest.raises(ValueError, match="start=7"):
        D.batches(x, y, 8, start=7)
    with pytest.raises(ValueError, match="49 labels"):
        D.batches(x, y[:49], 8)
    with pytest.raises(TypeError, match="uint8"):
        D.batches(x.astype(np.float32), y, 8)


def test_the_flip_policy_only_mirrors(xp):
    images = xp.asarray(np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4))
    out = D.augment_batch(images, np.random.default_rng(0), "flip")
    for original, flipped in zip(host(images), host(out)):
        assert np.array_equal(flipped, original) or np.array_equal(flipped, original[:, :, ::-1])


def rand_augment_one_op_at_a_time(images, rng, num_ops=2, magnitude=9, fill=128):
    """RandAugment as its definition reads: each op of ``RAND_AUGMENT_OPS`` on the images
    that drew it, one op after another (the reference of the batched form)."""
    xp = backend.xp_of(images)
    names = tuple(D.RAND_AUGMENT_OPS)
    m, n = magnitude / 30, images.shape[0]
    out = images.copy()
    for _ in range(num_ops):
        choice = rng.integers(0, len(names), size=n)
        signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        for k, name in enumerate(names):
            chosen = np.flatnonzero(choice == k)
            if chosen.size:
                index = xp.asarray(chosen)
                out[index] = D.RAND_AUGMENT_OPS[name](out[index], m, signs[chosen], fill)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_rand_augment_equals_one_op_at_a_time(xp, seed):
    """Three passes a round (one affine map, one blend, one table per image, the identity
    for images that drew another family) give every image exactly the pixels of its op."""
    x = images_on(xp, n=64)
    want = rand_augment_one_op_at_a_time(x, np.random.default_rng(seed), num_ops=3,
                                         magnitude=17)  # fmt: skip
    got = D.rand_augment(x, np.random.default_rng(seed), num_ops=3, magnitude=17)
    assert np.array_equal(host(got), host(want))
