"""fetch(): downloads against a loopback HTTP server, checksums, safe archive extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from rasa.cli import main
from rasa.data.fetch import MARKER, check_sha256, fetch
from rasa.errors import ChecksumError, ConfigError, DataError

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB: several chunks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 - http.server API
        if self.path == "/truncated":
            body = PAYLOAD[:1000]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 5000))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler.files
    srv.shutdown()
    srv.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_good_download(server, tmp_path):
    base, files = server
    files["/data.bin"] = PAYLOAD
    out = tmp_path / "sub" / "data.bin"
    assert fetch(f"{base}/data.bin", sha(PAYLOAD), out) == out
    assert out.read_bytes() == PAYLOAD
    assert leftovers(out.parent) == ["data.bin"]


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    base, files = server
    files["/data.bin"] = PAYLOAD
    wrong = sha(b"something else")
    with pytest.raises(ChecksumError) as err:
        fetch(f"{base}/data.bin", wrong, tmp_path / "data.bin")
    assert wrong in str(err.value) and sha(PAYLOAD) in str(err.value)
    assert leftovers(tmp_path) == []


def test_truncated_transfer_leaves_nothing(server, tmp_path):
    base, _ = server
    with pytest.raises(DataError, match="interrupted") as err:
        fetch(f"{base}/truncated", sha(PAYLOAD[:1000]), tmp_path / "t.bin")
    assert not isinstance(err.value, ChecksumError)
    assert leftovers(tmp_path) == []


def test_http_404_is_data_error(server, tmp_path):
    base, _ = server
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(f"{base}/missing.bin", sha(b""), tmp_path / "m.bin")
    assert leftovers(tmp_path) == []


def test_already_present_is_noop(server, tmp_path, capsys):
    base, _ = server
    out = tmp_path / "data.bin"
    out.write_bytes(PAYLOAD)
    os.utime(out, (1_000_000, 1_000_000))
    fetch(f"{base}/not-served-at-all", sha(PAYLOAD), out)  # never contacted
    assert out.stat().st_mtime == 1_000_000
    assert "up to date" in capsys.readouterr().out


def test_existing_file_with_wrong_content_is_replaced(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    out = tmp_path / "out.bin"
    out.write_bytes(b"stale")
    fetch(str(src), sha(PAYLOAD), out)
    assert out.read_bytes() == PAYLOAD


def test_local_path_and_file_url(tmp_path):
    src = tmp_path / "src dir" / "a.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    fetch(str(src), sha(PAYLOAD), tmp_path / "o1.bin")
    fetch(src.as_uri(), sha(PAYLOAD), tmp_path / "o2.bin")
    assert (tmp_path / "o1.bin").read_bytes() == (tmp_path / "o2.bin").read_bytes() == PAYLOAD
    with pytest.raises(DataError, match="not found"):
        fetch(str(tmp_path / "nope.bin"), sha(PAYLOAD), tmp_path / "o3.bin")


def test_sha256_argument_is_validated(tmp_path):
    assert check_sha256("AB" * 32) == "ab" * 32
    for bad in ("", "abc", "g" * 64, "a" * 65):
        with pytest.raises(ConfigError, match="64 hexadecimal"):
            fetch("x", bad, tmp_path / "x")
    with pytest.raises(ConfigError, match="scheme"):
        fetch("ftp://host/x", "a" * 64, tmp_path / "x")


# ---- archives --------------------------------------------------------------------------
def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_extract_good_tar_and_zip(server, tmp_path, capsys):
    base, files = server
    tar = make_tar([("imgs/a.txt", b"a"), ("imgs/b/c.txt", b"c"), link("imgs/l", "a.txt")])
    files["/good.tar.gz"] = tar
    out = tmp_path / "ds"
    fetch(f"{base}/good.tar.gz", sha(tar), out, extract=True)
    assert (out / "imgs/a.txt").read_bytes() == b"a"
    assert (out / "imgs/b/c.txt").read_bytes() == b"c"
    assert (out / "imgs/l").is_symlink() and (out / "imgs/l").read_bytes() == b"a"
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # no archive or staging left beside it
    assert (out / MARKER).is_file()
    capsys.readouterr()
    fetch(f"{base}/good.tar.gz", sha(tar), out, extract=True)
    assert "up to date" in capsys.readouterr().out

    z = make_zip({"x/y.txt": b"y", "z.txt": b"z"})
    zpath = tmp_path / "arch.zip"
    zpath.write_bytes(z)
    fetch(str(zpath), sha(z), tmp_path / "dz", extract=True)
    assert (tmp_path / "dz/x/y.txt").read_bytes() == b"y"


def test_extract_replaces_previous_fetch_but_not_foreign_dirs(tmp_path):
    a = make_tar([("one.txt", b"1")])
    b = make_tar([("two.txt", b"2")])
    (tmp_path / "a.tgz").write_bytes(a)
    (tmp_path / "b.tgz").write_bytes(b)
    out = tmp_path / "out"
    fetch(str(tmp_path / "a.tgz"), sha(a), out, extract=True)
    fetch(str(tmp_path / "b.tgz"), sha(b), out, extract=True)
    assert sorted(os.listdir(out)) == [MARKER, "two.txt"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    with pytest.raises(DataError, match="not made by"):
        fetch(str(tmp_path / "b.tgz"), sha(b), foreign, extract=True)
    assert os.listdir(foreign) == ["keep.txt"]


@pytest.mark.parametrize(
    "member, reason",
    [
        (("../evil.txt", b"x"), "'..'"),
        (("ok/../../evil.txt", b"x"), "'..'"),
        (("/tmp/evil.txt", b"x"), "absolute"),
        (link("innocent", "../../etc/passwd"), "symlink"),
        (link("innocent", "/etc/passwd"), "symlink"),
        (link("hard", "../outside", tarfile.LNKTYPE), "hard link"),
        (link("dev", "", tarfile.CHRTYPE), "device"),
    ],
)
def test_malicious_tar_is_refused(tmp_path, member, reason):
    data = make_tar([("fine.txt", b"fine"), member], mode="w")
    src = tmp_path / "evil.tar"
    src.write_bytes(data)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=reason):
        fetch(str(src), sha(data), out, extract=True)
    assert sorted(os.listdir(tmp_path)) == ["evil.tar"]  # nothing extracted, nothing left over


@pytest.mark.parametrize(
    "name, reason",
    [("../evil.txt", "'..'"), ("/abs/evil.txt", "absolute"), ("a\\..\\..\\e", "'..'")],
)
def test_malicious_zip_is_refused(tmp_path, name, reason):
    data = make_zip({"fine.txt": b"fine", name: b"x"})
    src = tmp_path / "evil.zip"
    src.write_bytes(data)
    with pytest.raises(DataError, match=reason):
        fetch(str(src), sha(data), tmp_path / "out", extract=True)
    assert sorted(os.listdir(tmp_path)) == ["evil.zip"]


def test_zip_symlink_out_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(info, "../../outside")
    data = buf.getvalue()
    src = tmp_path / "evil.zip"
    src.write_bytes(data)
    with pytest.raises(DataError, match="symlink"):
        fetch(str(src), sha(data), tmp_path / "out", extract=True)


def test_not_an_archive(tmp_path):
    src = tmp_path / "plain.bin"
    src.write_bytes(b"just bytes, not an archive")
    with pytest.raises(DataError, match="not a tar or zip"):
        fetch(str(src), sha(src.read_bytes()), tmp_path / "out", extract=True)
    assert sorted(os.listdir(tmp_path)) == ["plain.bin"]


def test_cli_fetch(tmp_path, capsys):
    src = tmp_path / "a.bin"
    src.write_bytes(PAYLOAD)
    assert (
        main(
            [
                "data",
                "fetch",
                "--url",
                str(src),
                "--sha256",
                sha(PAYLOAD),
                "--out",
                str(tmp_path / "b.bin"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "data",
                "fetch",
                "--url",
                str(src),
                "--sha256",
                "0" * 64,
                "--out",
                str(tmp_path / "c.bin"),
            ]
        )
        == 2
    )
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (tmp_path / "c.bin").exists()


def test_exception_mid_stream_leaves_nothing(tmp_path, monkeypatch):
    import contextlib

    import rasa.data.fetch as fetch_mod

    class Flaky(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return super().read(1000)

    @contextlib.contextmanager
    def flaky_source(url, timeout):
        yield Flaky(PAYLOAD), len(PAYLOAD)

    monkeypatch.setattr(fetch_mod, "_open_source", flaky_source)
    with pytest.raises(DataError, match="interrupted after 1000 bytes"):
        fetch("http://example.invalid/x", sha(PAYLOAD), tmp_path / "x.bin")
    assert leftovers(tmp_path) == []
