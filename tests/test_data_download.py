"""UD English-EWT download against a real HTTP server on 127.0.0.1: checksums, atomic writes, retries."""

import dataclasses
import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from chaincrf.data import DownloadError, TaggingDataModule, download, download_file, ensure_ud_ewt

FIXTURE = (Path(__file__).parent / "fixtures" / "data" / "tiny.conllu").read_bytes()
SHA = hashlib.sha256(FIXTURE).hexdigest()
FILES = {"en_ewt-ud-train.conllu": SHA, "en_ewt-ud-dev.conllu": SHA, "en_ewt-ud-test.conllu": SHA}


class Handler(BaseHTTPRequestHandler):
    """/good/* serves the fixture, /corrupt/* a changed copy, /drop/* closes after half the body,
    /flaky/* drops the first request for each file and then serves it."""

    requests: ClassVar[list[str]] = []
    flaky_seen: ClassVar[set[str]] = set()

    def do_GET(self):
        Handler.requests.append(self.path)
        mode, _, name = self.path.strip("/").partition("/")
        body = FIXTURE
        if mode == "corrupt":
            body = FIXTURE.replace(b"PRON", b"NOUN")
        elif mode == "missing":
            self.send_error(404)
            return
        drop = mode == "drop" or (mode == "flaky" and name not in Handler.flaky_seen)
        Handler.flaky_seen.add(name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.requests = []
    Handler.flaky_seen = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_download_verifies_and_writes_the_file(server, tmp_path):
    old = os.umask(0o027)
    try:
        target = download_file(f"{server}/good/x.conllu", tmp_path / "sub" / "x.conllu", SHA)
    finally:
        os.umask(old)
    assert target.read_bytes() == FIXTURE
    assert leftovers(tmp_path / "sub") == ["x.conllu"]
    assert target.stat().st_mode & 0o777 == 0o640  # the umask's, not tempfile's 0o600


def test_corrupted_file_is_rejected_and_not_kept(server, tmp_path):
    with pytest.raises(DownloadError, match=f"sha256 mismatch: expected {SHA}"):
        download_file(f"{server}/corrupt/x.conllu", tmp_path / "x.conllu", SHA)
    assert leftovers(tmp_path) == []
    assert len(Handler.requests) == 1  # a checksum mismatch is not retried


def test_dropped_connection_leaves_no_partial_file(server, tmp_path):
    with pytest.raises(DownloadError, match="download failed after 2 attempt"):
        download_file(f"{server}/drop/x.conllu", tmp_path / "x.conllu", SHA, retries=1, timeout=5)
    assert leftovers(tmp_path) == []
    assert len(Handler.requests) == 2


def test_a_failed_download_keeps_the_previous_file(server, tmp_path):
    (tmp_path / "x.conllu").write_bytes(b"old")
    with pytest.raises(DownloadError):
        download_file(f"{server}/drop/x.conllu", tmp_path / "x.conllu", SHA, retries=0, timeout=5)
    assert (tmp_path / "x.conllu").read_bytes() == b"old"
    assert leftovers(tmp_path) == ["x.conllu"]


def test_http_error_is_a_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download_file(f"{server}/missing/x.conllu", tmp_path / "x.conllu", SHA, retries=0)


def test_retry_after_a_dropped_connection(server, tmp_path):
    directory = ensure_ud_ewt(tmp_path, base_url=f"{server}/flaky/", files=FILES, timeout=5)
    assert leftovers(directory) == sorted(FILES)
    assert len(Handler.requests) == 6
    # a second call finds verified files and downloads nothing
    ensure_ud_ewt(tmp_path, base_url=f"{server}/flaky/", files=FILES)
    assert len(Handler.requests) == 6


def test_a_damaged_cached_file_is_downloaded_again(server, tmp_path):
    directory = ensure_ud_ewt(tmp_path, base_url=f"{server}/good", files=FILES)
    (directory / "en_ewt-ud-dev.conllu").write_bytes(b"truncated")
    ensure_ud_ewt(tmp_path, base_url=f"{server}/good", files=FILES)
    assert (directory / "en_ewt-ud-dev.conllu").read_bytes() == FIXTURE
    assert len(Handler.requests) == 4


def test_plain_http_only_for_a_local_server(tmp_path):
    with pytest.raises(ValueError, match="url must use https"):
        download_file("http://example.org/x", tmp_path / "x", SHA)


def test_official_checksums_are_those_of_the_release():
    assert download.UD_EWT_BASE_URL.startswith(
        "https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/r2.16/"
    )
    assert (
        download.UD_EWT_FILES["en_ewt-ud-train.conllu"]
        == "3fb78e2b55482c8ee00caa653af436c88c9e5bc9a73ce26e4ae3ddc79d2b7e7b"
    )


def _serve_ud_ewt(monkeypatch, base_url: str) -> None:
    """The registry's UD English-EWT entry pointed at the local test server."""
    entry = dataclasses.replace(download.DATASETS["ud_ewt"], base_url=base_url, files=FILES)
    monkeypatch.setitem(download.DATASETS, "ud_ewt", entry)


def test_datamodule_downloads_missing_ud_ewt_files(server, tmp_path, monkeypatch):
    _serve_ud_ewt(monkeypatch, f"{server}/good/")
    dm = TaggingDataModule(
        root=str(tmp_path / "empty"),
        train="ud_english_ewt/en_ewt-ud-train.conllu",
        dev="ud_english_ewt/en_ewt-ud-dev.conllu",
        format="conllu",
        scheme=None,
        download="ud_ewt",
        cache_dir=str(tmp_path / "cache"),
    )
    dm.prepare_data()
    dm.setup()
    assert len(dm.sentences["train"]) == 3
    assert leftovers(tmp_path / "cache" / "ud_english_ewt") == sorted(FILES)


def test_datamodule_with_a_corrupted_download_fails_without_leaving_files(
    server, tmp_path, monkeypatch
):
    _serve_ud_ewt(monkeypatch, f"{server}/corrupt/")
    dm = TaggingDataModule(
        train="nowhere/en_ewt-ud-train.conllu",
        format="conllu",
        scheme=None,
        download="ud_ewt",
        cache_dir=str(tmp_path),
    )
    with pytest.raises(DownloadError, match="sha256 mismatch") as error:
        dm.setup()
    assert leftovers(tmp_path / "ud_english_ewt") == []
    # the local file looked for first is named, and how to point at a local copy
    notes = " ".join(getattr(error.value, "__notes__", []))
    assert "nowhere/en_ewt-ud-train.conllu" in notes and "CHAINCRF_DATA" in notes


def test_a_missing_local_corpus_is_named_before_the_download(server, tmp_path, monkeypatch, caplog):
    _serve_ud_ewt(monkeypatch, f"{server}/good/")
    dm = TaggingDataModule(
        root=str(tmp_path / "wrong-root"),
        train="ud_english_ewt/en_ewt-ud-train.conllu",
        format="conllu",
        scheme=None,
        download="ud_ewt",
        cache_dir=str(tmp_path / "cache"),
    )
    with caplog.at_level("WARNING", logger="chaincrf.data"):
        dm.prepare_data()
    (record,) = [r for r in caplog.records if r.name == "chaincrf.data"]
    message = record.getMessage()
    assert (
        f"not found: {tmp_path / 'wrong-root' / 'ud_english_ewt' / 'en_ewt-ud-train.conllu'}"
        in message
    )
    assert "downloading" in message and str(tmp_path / "cache") in message


def test_an_unknown_corpus_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"download must be one of \('ud_ewt',\)"):
        TaggingDataModule(train="x.conllu", format="conllu", download="ud_klingon")
