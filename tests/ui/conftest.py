"""Fixtures of the browser suite: a `capstan server` on a temporary workspace, and headless
Chromium driven by Playwright.

Chromium is Debian's (/usr/bin/chromium, or $CAPSTAN_CHROMIUM); Playwright never downloads a
browser. Without Chromium or Playwright the suite is skipped, unless CAPSTAN_REQUIRE_CHROMIUM=1
(as in CI), which makes it fail.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = os.environ.get("CAPSTAN_CHROMIUM", "/usr/bin/chromium")


def binary():
    return os.environ.get("CAPSTAN_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "debug", "capstan"
    )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Capstan:
    """A workspace with a server on it."""

    def __init__(self, prefix):
        self.home = tempfile.mkdtemp(prefix=prefix)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def cli(self, *args, check=True, cwd=None, env=None):
        done = subprocess.run(
            [binary(), "--home", self.home, *args],
            capture_output=True,
            text=True,
            cwd=cwd or REPO,
            env=env,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"capstan {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def start(self):
        self.proc = subprocess.Popen(
            [binary(), "--home", self.home, "server", "--port", str(self.port)],
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health") as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("capstan server exited: " + self.proc.stderr.read().decode())
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError("capstan server did not become healthy")
            time.sleep(0.05)

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.home, ignore_errors=True)


def _require(reason):
    if os.environ.get("CAPSTAN_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"CAPSTAN_REQUIRE_CHROMIUM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        _require(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require("python playwright is missing (scripts/python-env.sh)")
    profile = tempfile.mkdtemp(prefix="capstan-chromium-")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            viewport={"width": 1440, "height": 900},
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-quic",
                "--no-first-run",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def shots():
    """Where screenshots go: $CAPSTAN_UI_SCREENSHOTS, or a temporary directory (printed)."""
    path = os.environ.get("CAPSTAN_UI_SCREENSHOTS") or tempfile.mkdtemp(prefix="capstan-ui-shots-")
    os.makedirs(path, exist_ok=True)
    print(f"\nscreenshots: {path}", file=sys.stderr)
    return path


@pytest.fixture()
def page(browser):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    page.close()
    assert not errors, f"javascript errors: {errors}"
