"""Helpers for tests/test_browser.py: a throw-away JupyterLab server and a few page operations.

The server is isolated from the machine's own Jupyter setup: it runs under this interpreter
(`sys.executable -m jupyter lab`), so the kernelspec argv "python" resolves to the venv's
python; JUPYTER_PATH puts the venv's share/jupyter first and JUPYTER_DATA_DIR / CONFIG_DIR /
RUNTIME_DIR, IPYTHONDIR and the lab settings/workspaces dirs point into a temp dir, so no user
kernel, config, startup script or saved workspace leaks in.

Stopping: the server runs in its own session; jupyter_client starts each kernel in yet another
session, so killing the server's process group alone would orphan the kernels. `stop()` asks the
server to shut down (which shuts its kernels down), then kills, by pid, whatever it had started
and is still alive, then the server's process group.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import psutil

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# JupyterLab user settings for a quiet, fully rendered notebook:
#  * windowingMode "none": every cell is in the DOM (no virtualisation), so prompts can be counted;
#  * no news / update toasts over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


def chromium_path() -> Optional[str]:
    """The Debian chromium binary, or None. Never a browser downloaded by `playwright install`."""
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# processes (psutil)

def descendants(pid: int) -> list[psutil.Process]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:                  # gone, a zombie, or not ours to read
        return []


def _alive(proc: psutil.Process) -> bool:
    """Still the same process (psutil compares its start time: a reused pid is not it) and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---------------------------------------------------------------------------------------------
# the server

class JupyterLabServer:
    def __init__(self, root_dir: Path, work_dir: Path, log_path: Path, env_extra: Optional[dict] = None):
        self.root_dir, self.work_dir, self.log_path = Path(root_dir), Path(work_dir), Path(log_path)
        self.env_extra = dict(env_extra or {})
        self.token = secrets.token_hex(16)
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self._log = None
        self.leftovers: list[int] = []      # processes it started that survived stop()

    # -- urls and REST
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self, notebook: str, workspace: Optional[str] = None) -> str:
        """The notebook alone in a fresh workspace (`reset`): nothing another page left open."""
        ws = f"/workspaces/{workspace}" if workspace else ""
        return f"{self.base}/lab{ws}/tree/{notebook}?reset&token={self.token}"

    def api(self, path: str, method: str = "GET", timeout: float = 10):
        req = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    # -- environment
    def _env(self) -> dict:
        w = self.work_dir
        settings = w / "lab-settings"
        for name, value in LAB_SETTINGS.items():
            plugin, file = name.rsplit("/", 1)
            (settings / plugin).mkdir(parents=True, exist_ok=True)
            (settings / plugin / file).write_text(json.dumps(value))
        venv_share = Path(sys.prefix) / "share" / "jupyter"
        env = dict(os.environ)
        for var in ("JUPYTER_PREFER_ENV_PATH", "JUPYTER_PLATFORM_DIRS", "PYTHONSTARTUP"):
            env.pop(var, None)
        env.update({
            "JUPYTER_PATH": str(venv_share),
            "JUPYTER_DATA_DIR": str(w / "jupyter-data"),
            "JUPYTER_CONFIG_DIR": str(w / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(w / "jupyter-runtime"),
            "IPYTHONDIR": str(w / "ipython"),
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(w / "lab-workspaces"),
            "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
            "MSDETR_FAST": "1",
        })
        env.update(self.env_extra)
        return env

    # -- lifecycle
    def start(self, timeout: float = 120, attempts: int = 3) -> "JupyterLabServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        env = self._env()
        last = ""
        for _ in range(attempts):      # a free port can be taken between free_port() and the bind
            self.port = free_port()
            cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1",
                   "--port", str(self.port), "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}"]
            if os.geteuid() == 0:
                cmd.append("--allow-root")
            self.proc = subprocess.Popen(cmd, cwd=self.root_dir, env=env, stdin=subprocess.DEVNULL,
                                         stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    self.api("status", timeout=5)
                    return self
                except (urllib.error.URLError, ConnectionError, OSError) as e:
                    last = repr(e)
                    time.sleep(0.5)
            self.stop(close_log=False)
        self._close_log()
        raise RuntimeError(f"jupyter lab did not come up ({last}); log: {self.log_path}\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def kernels(self) -> list[dict]:
        return self.api("kernels")

    def kernel_pids(self) -> list[int]:
        """Kernel processes this server started (found below it in the process tree)."""
        if self.proc is None:
            return []
        return [p.pid for p in descendants(self.proc.pid) if "ipykernel_launcher" in " ".join(cmdline(p.pid))]

    def shutdown_kernels(self) -> None:
        try:
            for k in self.kernels():
                self.api(f"kernels/{k['id']}", method="DELETE", timeout=30)
        except (urllib.error.URLError, OSError):
            pass

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, grace: float = 20, close_log: bool = True) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            # snapshot what it started (kernels sit in their own sessions) before it goes away
            tree = descendants(proc.pid)
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)      # jupyter_server shuts its kernels down
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(10)
            for child in tree:                               # leftovers, one by one (never a reused pid)
                if _alive(child):
                    try:
                        child.kill()
                    except psutil.NoSuchProcess:
                        pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)          # anything else left in its group
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + 10                 # killed ones may linger as zombies: not alive
            while time.monotonic() < deadline and any(_alive(c) for c in tree):
                time.sleep(0.2)
            self.leftovers = [c.pid for c in tree if _alive(c)]
        if close_log:
            self._close_log()


# ---------------------------------------------------------------------------------------------
# notebooks

def clean_copy(src: Path, dst: Path) -> dict:
    """Copy a notebook without outputs, execution counts or saved widget state; return it as JSON.

    Cleared prompts are what the run-all wait relies on: a prompt with a number was run now."""
    nb = json.loads(Path(src).read_text())
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    Path(dst).write_text(json.dumps(nb, indent=1))
    return nb


def code_cells_to_run(nb: dict) -> int:
    """Code cells JupyterLab's run-all executes (it skips empty ones)."""
    def src(c):
        s = c.get("source", "")
        return "".join(s) if isinstance(s, list) else s
    return sum(1 for c in nb["cells"] if c["cell_type"] == "code" and src(c).strip())


SCRATCH_CELLS = [
    "import matplotlib\n"
    "%matplotlib inline\n"
    "import matplotlib.pyplot as plt\n"
    "import numpy as np\n"
    "import ipywidgets as widgets\n"
    "from IPython.display import display",

    "out = widgets.Output()\n"
    "slider = widgets.IntSlider(value=2, min=1, max=8, description='K')\n"
    "\n"
    "def redraw(change=None):\n"
    "    k = slider.value\n"
    "    with out:\n"
    "        out.clear_output(wait=True)\n"
    "        fig, ax = plt.subplots(figsize=(4, 3))\n"
    "        x = np.linspace(0, 2 * np.pi, 200)\n"
    "        ax.plot(x, np.sin(k * x))\n"
    "        ax.set_title(f'K = {k}')\n"
    "        plt.show()\n"
    "\n"
    "slider.observe(redraw, names='value')\n"
    "redraw()\n"
    "display(widgets.VBox([slider, out]))",

    "import sys\n"
    "print(sys.executable)",
]


def write_scratch_notebook(path: Path) -> dict:
    nb = {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
                     "language_info": {"name": "python"}},
        "cells": [{"cell_type": "code", "id": f"cell{i}", "metadata": {}, "execution_count": None, "outputs": [],
                   "source": src} for i, src in enumerate(SCRATCH_CELLS)],
    }
    Path(path).write_text(json.dumps(nb, indent=1))
    return nb


# ---------------------------------------------------------------------------------------------
# page operations (playwright sync API)

_PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))
                   .map(e => e.textContent.trim())"""


def prompts(page) -> list[str]:
    return page.evaluate(_PROMPTS_JS)


def run_all_cells(page) -> None:
    """Run > Run All Cells, through the menu bar (JupyterLab command runmenu:run-all)."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).first.click()
    item = page.locator('.lm-Menu-item[data-command="runmenu:run-all"]')
    item.wait_for(state="visible", timeout=30_000)
    item.click()


def wait_until_all_ran(page, server: JupyterLabServer, expected: int, timeout: float) -> list[str]:
    """Wait for run-all to finish: no `[*]` prompt left and the kernel idle (twice in a row).

    Returns the final prompts. Run-all stops at the first exception, so callers check that
    `expected` cells have numbers."""
    deadline = time.monotonic() + timeout
    seen_busy, idle_polls, last = False, 0, []
    while time.monotonic() < deadline:
        last = prompts(page)
        busy = any("*" in p for p in last)
        seen_busy |= busy
        numbered = sum(1 for p in last if re.search(r"\[\d+\]", p))
        if not busy and (seen_busy or numbered >= expected):
            try:
                states = [k.get("execution_state") for k in server.kernels()]
            except (urllib.error.URLError, OSError):
                states = ["?"]
            idle_polls = idle_polls + 1 if states and all(s == "idle" for s in states) else 0
            if idle_polls >= 2:
                return last
        else:
            idle_polls = 0
        time.sleep(1.0)
    raise TimeoutError(f"run-all did not finish in {timeout:.0f}s; prompts: {last}")


_FIND_SLIDER_JS = """(label) => {
    const sliders = Array.from(document.querySelectorAll('.jp-Notebook .widget-slider'));
    return sliders.findIndex(s => {
        const l = s.querySelector('.widget-label');
        return l && l.textContent.trim().replace(/:$/, '').trim() === label;
    });
}"""


def slider_by_label(page, label: str):
    """The `.widget-slider` whose description is `label` (e.g. "K"), or None."""
    idx = page.evaluate(_FIND_SLIDER_JS, label)
    return None if idx < 0 else page.locator(".jp-Notebook .widget-slider").nth(idx)


def output_images(cell) -> list[str]:
    """src of every <img> in a cell's output area (inline matplotlib figures are data: PNGs)."""
    return cell.evaluate("""(c) => Array.from(c.querySelectorAll('.jp-Cell-outputArea img'))
                                      .map(i => i.getAttribute('src') || '')""")
