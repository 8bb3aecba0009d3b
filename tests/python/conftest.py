"""Starts one `capstan server` for the suite: a temporary workspace and a free loopback port.

The binary is $CAPSTAN_BIN (the integration test binary sets it), or target/debug/capstan.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server_url():
    binary = os.environ.get("CAPSTAN_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "capstan"
    )
    home = tempfile.mkdtemp(prefix="capstan-mlflow-")
    port = _free_port()
    args = [binary, "--home", home, "server", "--port", str(port)]
    if os.environ.get("CAPSTAN_TEST_BACKEND_STORE_URI"):
        args[1:1] = ["--backend-store-uri", os.environ["CAPSTAN_TEST_BACKEND_STORE_URI"]]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/health") as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("capstan server exited: " + proc.stderr.read().decode())
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("capstan server did not become healthy")
        time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture()
def client(server_url, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(server_url)
    return mlflow.MlflowClient(server_url)
