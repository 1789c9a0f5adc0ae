"""The checkpoint downloader against a real HTTP server on loopback (nothing else is reachable here): progress,
size and sha256 checks, resume with HTTP Range, skip when present, clear errors."""
from __future__ import annotations

import hashlib
import http.server
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import download_models as dm  # noqa: E402

PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB


class Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    requests: list = []

    def do_GET(self):  # noqa: N802
        Handler.requests.append((self.path, self.headers.get("Range")))
        data = Handler.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.files = {"ckpt.pt": PAYLOAD}
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def entry(url: str, sha: str | None = hashlib.sha256(PAYLOAD).hexdigest(), size: int | None = len(PAYLOAD)):
    return dm.Entry("test", url, "dit", "ckpt.pt", size, sha, "a test file")


def test_downloads_verifies_and_reports_progress(server, tmp_path):
    seen = []
    path = dm.download(entry(f"{server}/ckpt.pt"), tmp_path, progress=lambda d, t, n: seen.append((d, t)))
    assert path == tmp_path / "dit" / "ckpt.pt" and path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(seen) >= 2
    assert not (tmp_path / "dit" / "ckpt.pt.part").exists()
    Handler.requests.clear()
    assert dm.download(entry(f"{server}/ckpt.pt"), tmp_path, progress=None) == path  # present: skipped
    assert Handler.requests == []


def test_resumes_a_partial_download_with_range(server, tmp_path):
    part = tmp_path / "dit" / "ckpt.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:300_000])
    Handler.requests.clear()
    path = dm.download(entry(f"{server}/ckpt.pt"), tmp_path, progress=None)
    assert path.read_bytes() == PAYLOAD
    assert Handler.requests == [("/ckpt.pt", "bytes=300000-")]


def test_wrong_hash_or_size_is_refused_and_nothing_is_left(server, tmp_path):
    with pytest.raises(dm.DownloadError, match="sha256 .* does not match"):
        dm.download(entry(f"{server}/ckpt.pt", sha="0" * 64), tmp_path, progress=None)
    with pytest.raises(dm.DownloadError, match="the catalog says 5"):
        dm.download(entry(f"{server}/ckpt.pt", size=5), tmp_path, progress=None)
    assert list((tmp_path / "dit").iterdir()) == []


def test_http_errors_and_unreachable_hosts_are_named(server, tmp_path):
    with pytest.raises(dm.DownloadError, match="HTTP 404"):
        dm.download(entry(f"{server}/missing.pt"), tmp_path, progress=None)
    with pytest.raises(dm.DownloadError, match="cannot connect"):
        dm.download(entry("http://127.0.0.1:9/ckpt.pt"), tmp_path, progress=None, timeout=5)


def test_cli_with_a_mirror_puts_catalog_files_in_their_folders(server, tmp_path, monkeypatch, capsys):
    e = next(iter(dm.CATALOG.values()))
    data = b"not the real checkpoint"
    Handler.files[e.file] = data
    fake = dm.Entry(e.name, e.url, e.folder, e.file, len(data), hashlib.sha256(data).hexdigest(), e.what)
    monkeypatch.setitem(dm.CATALOG, e.name, fake)
    assert dm.main([e.name, "--models-dir", str(tmp_path), "--mirror", server]) == 0
    assert (tmp_path / e.folder / e.file).read_bytes() == data
    assert dm.main(["no-such-model", "--models-dir", str(tmp_path)]) == 2
    assert dm.main(["--list"]) == 0
    assert e.name in capsys.readouterr().out


def test_catalog_entries_are_complete():
    assert dm.CATALOG, "the catalog lists the public checkpoints"
    folders = {"stylegan", "dit", "clip_style", "vae", "var"}
    for e in dm.CATALOG.values():
        assert e.url.startswith("https://") and e.folder in folders and e.file and e.source, e
        assert e.sha256 is None or len(e.sha256) == 64
