"""CIFAR-10 (tinyvit.data.cifar10, tinyvit.data.download): the binary reader, the
download (against a local HTTP server) and safe unpacking."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import socket
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinyvit import data as D
from tinyvit.data import DataError, cifar10, download

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
    with pytest.raises(DataError, match="names 2 classes, but CIFAR-10 has 10"):
        D.load_cifar10(folder, records=RECORDS)


def test_a_class_file_with_eleven_names_is_refused(folder):
    path = folder / D.META_FILE
    path.write_text("\n".join([*D.CLASSES, "unicorn"]) + "\n")
    with pytest.raises(DataError) as info:
        D.load_cifar10(folder, records=RECORDS)
    message = str(info.value)
    assert f"{path} names 11 classes, but CIFAR-10 has 10" in message
    for words in ("labels 0..9", "UTF-8 text, one a line", "delete it"):
        assert words in message, words


@pytest.mark.parametrize(
    "content,words",
    [
        (bytes(range(256)) * 4, "is not UTF-8 text (byte 0x80 at offset 128)"),
        (b"\x00\x01\x02\n" * 10, "is not plain text ('\\x00\\x01\\x02')"),
        (("\n".join([*D.CLASSES[:9], "cat"]) + "\n").encode(), "names 'cat' more than once"),
    ],
    ids=["binary", "control characters", "a name twice"],
)
def test_a_class_file_that_is_not_ten_names_is_one_clear_error(folder, content, words):
    path = folder / D.META_FILE
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        D.read_classes(path)
    message = str(info.value)
    assert message.startswith(str(path)) and words in message, message
    assert "\n" not in message and "10 classes" in message


def test_class_names_may_be_any_ten_utf8_names(folder):
    names = ("avión", "automóvil", "pájaro", "gato", "ciervo", "perro", "rana", "caballo",
             "barco", "camión")  # fmt: skip
    (folder / D.META_FILE).write_text("\n\n".join(names) + "\n", encoding="utf-8")
    assert D.load_cifar10(folder, records=RECORDS).classes == names
    (folder / D.META_FILE).write_text("\r\n".join(names), encoding="utf-8-sig")  # Notepad's
    assert D.read_classes(folder / D.META_FILE) == names


@pytest.mark.parametrize("label", [10, 255])
def test_a_label_outside_0_to_9_in_a_batch_file_is_named(folder, files, label):
    images, labels = files["data_batch_2.bin"]
    labels = labels.copy()
    labels[7] = label
    path = folder / "data_batch_2.bin"
    path.write_bytes(batch_bytes(images, labels))
    expected = f"{path}: record 7 has label {label} (1 of {RECORDS} records are out of range)"
    with pytest.raises(DataError, match=re.escape(expected) + ".*labels go 0..9"):
        D.load_cifar10(folder, records=RECORDS)
    with pytest.raises(DataError, match="record 7"):
        D.read_batch(path, records=None)


# ---------------------------------------------------------------------------
# Where the data is: a named folder must exist; the default one is created
# ---------------------------------------------------------------------------


@pytest.fixture
def no_fetch(monkeypatch):
    """Any download fails the test: nothing may be fetched."""

    def fetch(*args, **kwargs):
        pytest.fail("a download was started")

    monkeypatch.setattr(download, "_fetch", fetch)
    monkeypatch.setattr(download, "download_release", fetch)
    monkeypatch.setattr(cifar10, "download_release", fetch)


@pytest.mark.parametrize("download_on", [True, False])
def test_a_named_folder_that_is_not_there_is_refused_and_nothing_is_created(
    tmp_path, no_fetch, download_on, monkeypatch
):
    monkeypatch.setenv("TINYVIT_DATA", str(tmp_path / "default"))
    typo = tmp_path / "dta"
    with pytest.raises(DataError) as info:
        D.load_cifar10(typo, download=download_on)
    assert list(tmp_path.iterdir()) == []  # neither the misspelled folder nor the default
    python, command_line = str(info.value), info.value.command_line
    for message in (python, command_line):
        assert message.startswith(f"no folder {typo} (")
        for words in (f"{D.FOLDER}/", D.ARCHIVE, "nothing was created", "create the folder",
                      str(tmp_path / "default"), "$TINYVIT_DATA", "~/.cache/tinyvit",
                      "created and downloaded into"):  # fmt: skip
            assert words in message, (words, message)
    assert "the root argument" in python and "pass root=None" in python
    assert "--data-dir" not in python
    assert "(--data-dir)" in command_line and "leave --data-dir out" in command_line
    assert "root argument" not in command_line and "root=None" not in command_line


def test_a_root_that_is_a_file_is_one_clear_error(tmp_path, no_fetch, monkeypatch):
    blocker = tmp_path / "cifar.tar"
    blocker.write_bytes(b"not a folder")
    with pytest.raises(DataError) as info:
        D.load_cifar10(blocker)
    assert info.value.command_line.startswith(f"{blocker} (--data-dir) is a file, not a folder")
    assert f"{D.FOLDER}/" in str(info.value) and D.ARCHIVE in str(info.value)
    monkeypatch.setenv("TINYVIT_DATA", str(blocker))
    with pytest.raises(DataError, match="default data folder .* is a file, not a folder"):
        D.load_cifar10()
    monkeypatch.setenv("TINYVIT_DATA", str(blocker / "data"))
    with pytest.raises(DataError, match=f"cannot create the data folder {blocker / 'data'}"):
        D.load_cifar10()
    assert blocker.read_bytes() == b"not a folder"


def test_no_download_speaks_python_and_the_command_line_each_its_own(tmp_path, no_fetch):
    with pytest.raises(DataError) as info:
        D.load_cifar10(tmp_path, download=False)
    python, command_line = str(info.value), info.value.command_line
    assert "pass download=True" in python and "--no-download" not in python
    assert "--data-dir" not in python and "the root argument" in python
    assert "run again without --no-download" in command_line and "--data-dir" in command_line
    assert "download=True" not in command_line and "root argument" not in command_line
    assert list(tmp_path.iterdir()) == []


def test_the_default_folder_is_created_and_downloaded_into(
    tmp_path, server, files, monkeypatch
):
    options = serve(server, files)
    real = D.download_cifar10
    monkeypatch.setattr(cifar10, "download_cifar10", lambda root: real(root, **options))
    root = tmp_path / "cache" / "tinyvit"
    monkeypatch.setenv("TINYVIT_DATA", str(root))
    data = D.load_cifar10(records=RECORDS)  # the default: made, then downloaded into
    assert (root / D.FOLDER / D.TEST_FILE).is_file() and len(data.y_test) == RECORDS
    assert [status for _, _, status in server.log] == [200]
    assert D.check_root() == root and D.check_root(str(root)) == root


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
    monkeypatch.setattr(cifar10, "download_cifar10", lambda root: real(root, **options))
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

