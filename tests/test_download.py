"""``download``: served from a local HTTP server on 127.0.0.1 (never the internet)."""

import functools
import hashlib
import http.server
import os
import threading

import pytest

from minialexnet import data
from minialexnet.data import DataError, DownloadError, download
from data_fixtures import make_cifar_targz


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1:<free port>; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path != "/short.tar.gz":
                return super().do_GET()
            # A connection that dies mid-file: promises 1000 bytes, sends 10.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
    handler = functools.partial(Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIALEXNET_CACHE", str(tmp_path / "cache"))


def _md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_download_cifar10_from_local_server(server, tmp_path):
    base, www = server
    archive = make_cifar_targz(str(www / "cifar-10-python.tar.gz"), per_batch=2)
    root = tmp_path / "data"
    got = download("cifar10", str(root), url=f"{base}/cifar-10-python.tar.gz",
                   md5=_md5(archive), progress_bar=False)
    assert got == str(root / "cifar-10-batches-py")
    # No temp files left; the verified pickles converted once into the packed npz.
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py", "cifar10"]
    assert sorted(os.listdir(root / "cifar10")) == ["cifar10_test.npz", "cifar10_train.npz"]
    ds = data.load_dataset("cifar10", str(root))
    assert ds.x.shape == (10, 32, 32, 3) and len(ds.class_names) == 10
    # Already complete: no second download (the server would 404 now).
    os.remove(archive)
    assert download("cifar10", str(root), url=f"{base}/cifar-10-python.tar.gz",
                    md5="0" * 32, progress_bar=False) == got


def test_sha256_is_checked_too(server, tmp_path):
    base, www = server
    archive = make_cifar_targz(str(www / "c.tar.gz"))
    sha = hashlib.sha256(open(archive, "rb").read()).hexdigest()
    download("cifar10", str(tmp_path / "d"), url=f"{base}/c.tar.gz", sha256=sha, progress_bar=False)
    assert os.path.isdir(tmp_path / "d" / "cifar-10-batches-py")


def test_checksum_mismatch_leaves_nothing_complete_looking(server, tmp_path):
    base, www = server
    make_cifar_targz(str(www / "cifar-10-python.tar.gz"))
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="md5 mismatch"):
        download("cifar10", str(root), url=f"{base}/cifar-10-python.tar.gz",
                 md5="0" * 32, progress_bar=False)
    assert os.listdir(root) == []              # no archive, no .part file, no folder
    with pytest.raises(DataError, match="no CIFAR-10 found"):
        data.load_dataset("cifar10", str(root))


def test_wrong_archive_format_and_unreachable_url(server, tmp_path):
    base, www = server
    (www / "junk.tar.gz").write_bytes(b"this is not a tar file")
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="cannot extract"):
        download("cifar10", str(root), url=f"{base}/junk.tar.gz", progress_bar=False)
    assert os.listdir(root) == []
    with pytest.raises(DownloadError, match="cannot download"):
        download("cifar10", str(root), url=f"{base}/missing.tar.gz", progress_bar=False)
    assert os.listdir(root) == []
    with pytest.raises(DataError, match="unknown dataset"):
        download("mnist", str(root))


def test_interrupted_download_leaves_nothing(server, tmp_path):
    base, _ = server
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="interrupted"):
        download("cifar10", str(root), url=f"{base}/short.tar.gz", md5="0" * 32, progress_bar=False)
    assert os.listdir(root) == []


def test_official_sources_are_the_published_ones():
    from minialexnet.data.download import SOURCES
    assert SOURCES["cifar10"]["url"] == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert SOURCES["cifar10"]["md5"] == "c58f30108f718f92721af3b95e74349a"
    assert SOURCES["imagenette"]["url"].startswith("https://s3.amazonaws.com/fast-ai-imageclas/")


def test_main_download_one_line_error(server, tmp_path, capsys):
    from minialexnet.data.__main__ import main
    base, _ = server
    rc = main(["download", "cifar10", "--data-dir", str(tmp_path / "d"),
               "--url", f"{base}/nothing.tgz"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err


def test_an_unverified_archive_is_extracted_but_not_unpickled(server, tmp_path):
    base, www = server
    make_cifar_targz(str(www / "c.tar.gz"), per_batch=2)
    root = tmp_path / "data"
    said = []
    download("cifar10", str(root), url=f"{base}/c.tar.gz", progress_bar=False, log=said.append)
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py"]       # not converted
    assert len(said) == 1 and "convert-cifar10" in said[0]
    with pytest.raises(DataError, match="convert-cifar10"):
        data.load_dataset("cifar10", str(root))


def test_main_download_says_where_and_converts(server, tmp_path, capsys):
    from minialexnet.data.__main__ import main
    base, www = server
    archive = make_cifar_targz(str(www / "c.tar.gz"), per_batch=2)
    rc = main(["download", "cifar10", "--data-dir", str(tmp_path / "d"), "--url",
               f"{base}/c.tar.gz", "--md5", _md5(archive)])
    out, err = capsys.readouterr()
    assert rc == 0 and "converted the checksum-verified batches" in err
    assert out.strip() == f"cifar10: ready in {tmp_path / 'd' / 'cifar-10-batches-py'}"
