"""Tier `e2e`: a real ComfyUI server (`main.py --cpu`) on a free loopback port, with the pack installed.

The server gets its own base directory (custom_nodes/driftless links to this checkout; models,
input, output and user folders are empty) and an in-memory database, so it writes nothing
outside the test's temp folder.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from driftless.headless import host


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, root: pathlib.Path, base: pathlib.Path, log_path: pathlib.Path):
        self.root, self.base, self.log_path = root, base, log_path
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout=180):
        host.link_pack(self.base / "custom_nodes")
        cmd = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:", "--disable-api-nodes",
            "--disable-auto-launch",
        ]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the server sees only ComfyUI + venv
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def log_tail(self, n=4000) -> str:
        self.log.flush()
        return self.log_path.read_text()[-n:]

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path, payload):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        assert status == 200, body
        assert body["node_errors"] == {}, body  # 200 can still carry errors for some outputs
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout=300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")


_ARTIFACT_FOLDERS: list[pathlib.Path] = []


@pytest.fixture(scope="session")
def artifacts_dir(repo):
    """A folder for files a person looks at after the run (screenshots): test-artifacts/<name>/ in the checkout
    (git-ignored), or under DRIFTLESS_ARTIFACTS; emptied first, listed in the summary."""
    root = pathlib.Path(os.environ.get("DRIFTLESS_ARTIFACTS") or repo / "test-artifacts")

    def make(name: str) -> pathlib.Path:
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        _ARTIFACT_FOLDERS.append(folder)
        return folder

    return make


def pytest_terminal_summary(terminalreporter):
    for folder in _ARTIFACT_FOLDERS:
        files = sorted(folder.iterdir())
        terminalreporter.write_line(f"[e2e] {len(files)} test artifact(s) in {folder}")


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    root = host.find_comfyui()
    host.configure_args(root, cpu=True)  # the tests import node schemas to compare with /object_info
    base = tmp_path_factory.mktemp("server_base")
    server = ComfyServer(root, base, base / "server.log")
    server.start()
    yield server
    server.stop()
