"""The notebooks as people use them: JupyterLab and the ``mkv explore`` page driven in headless Chromium.

``make browser-test`` runs this file (the ``browser`` marker; the default pytest run deselects it). The test starts
its own servers on 127.0.0.1: JupyterLab over copies of notebooks 03 and 05 (so nothing is saved into the
checkout), and ``mkv explore``. Playwright drives the system's Chromium (Debian's ``chromium``; ``MKV_CHROMIUM``
names another), each run with a fresh profile. In JupyterLab: Run All in fast mode, no cell with an error, no
"Error displaying widget"; then the explorer: the slider dragged and moved with the keyboard, allocation,
projections and the K/V split switched, a budget typed, *generate* pressed; after every change the readout must
read exactly what the trajectory gives for the slider's budget and the rank heat maps must have been redrawn; the
browser console must stay free of errors. The time from a key press on the slider to the redrawn, decoded image
is measured over 10 moves and written with its median to build/browser/redraw_benchmark.json (a benchmark: no
time is asserted). Screenshots go to build/browser/.

External requests (none in JupyterLab; Voila's page asks a CDN for Font Awesome) are answered with an empty
response, as on a machine without network, and listed in the benchmark file.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mkvlib.models import EMBEDDED
from mkvlib.core.trajectory import Trajectory, shipped_trajectory_path
from mkvlib.widgets import KV_SPLITS, SLIDER_STEP, explorer_ranks, readout, readout_text

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "browser"
NOTEBOOKS = ("03_rank_search.ipynb", "05_compressed_cache.ipynb")
# headless, and quiet on a closed network: no background connections, updates, sync or QUIC
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# JupyterLab settings of the test's own (user settings folder): every cell kept in the page so that every output
# and widget renders; no autosave, news or extension manager
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False},
}
RUN_ALL_TIMEOUT_S = 900
PROMPTS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell .jp-InputPrompt"   # the open notebook's
UPDATE_TIMEOUT_MS = 60_000
MOVES = 10
RESULTS: dict = {"pages": {}, "external_requests": []}   # what the module writes to redraw_benchmark.json

# Records the time of the last key press or pointer release, and when the heat-map image next got a new source
# and finished decoding it: from input to redrawn figure.
REDRAW_PROBE = """(img) => {
  const probe = {start: null, drawn: null, sources: 0};
  window.__mkvRedraw = probe;
  const begin = () => { probe.start = performance.now(); probe.drawn = null; };
  document.addEventListener('keydown', begin, true);
  document.addEventListener('pointerup', begin, true);
  new MutationObserver(() => {
    probe.sources += 1;
    img.decode().then(() => { if (probe.drawn === null) probe.drawn = performance.now(); }, () => {});
  }).observe(img, {attributes: true, attributeFilter: ['src']});
}"""


def _wanted(config) -> bool:
    expression = config.getoption("markexpr") or ""
    return "browser" in expression and "not browser" not in expression


@pytest.fixture(scope="module", autouse=True)
def only_when_asked(request):
    """Never in a run that did not select the browser marker (`pytest -m "not slow"` would otherwise)."""
    if not _wanted(request.config):
        pytest.skip("the browser test runs with `make browser-test` (pytest -m browser)")


def chromium_executable() -> str:
    """MKV_CHROMIUM, else the first Chromium or Chrome on PATH; a clear failure when there is none."""
    named = os.environ.get("MKV_CHROMIUM")
    if named:
        if not Path(named).is_file():
            pytest.fail(f"MKV_CHROMIUM={named} is not a file")
        return named
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Chromium found (looked for " + ", ".join(CHROMIUM_NAMES) + "): on Debian `apt-get install "
                "chromium` (as root), or set MKV_CHROMIUM=/path/to/chrome")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check, timeout_s: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``check()`` until it returns a true value; fail with ``what`` (and the log's tail) on timeout or when
    ``process`` exits."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what}: not within {timeout_s:.0f} s" + (f" (exit status {process.returncode})" if process
                and process.returncode is not None else "") + (f"\n--- {log} ---\n{tail}" if tail else ""))


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (JupyterLab and mkv explore shut their kernels down), then kill what is left of the process group
    the test started."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def server_env() -> dict:
    env = dict(os.environ, MKV_FAST="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def out_dir():
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


@pytest.fixture(scope="module")
def chromium(out_dir, request):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright is missing: {sys.executable} -m pip install -e '.[browser]' (make browser-test "
                    "does it)")
    with sync_playwright() as playwright:
        # launch() gives every run a fresh, temporary --user-data-dir
        browser = playwright.chromium.launch(executable_path=chromium_executable(), headless=True,
                                             args=CHROMIUM_FLAGS)
        RESULTS["chromium"] = browser.version
        yield browser
        browser.close()
    write_benchmark(request)


def write_benchmark(request) -> None:
    """build/browser/redraw_benchmark.json, and one line per page on the terminal."""
    RESULTS.update(command="make browser-test", when=time.strftime("%Y-%m-%d %H:%M:%S"),
                   machine={"cpus": os.cpu_count(), "platform": platform.platform(),
                            "processor": platform.processor() or platform.machine(),
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
                   measures="time from a key press on the budget slider (one step of 1/64, downwards) to the "
                            "rank heat maps' new image decoded in the page; the first move of each page included")
    path = OUT / "redraw_benchmark.json"
    path.write_text(json.dumps(RESULTS, indent=1) + "\n")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():                   # on the terminal, also when the test passed
        for name, page in RESULTS["pages"].items():
            print(f"\nslider redraw in Chromium, {name}: median {page['median_ms']:.0f} ms over {page['moves']} key "
                  f"moves (min {min(page['key_moves_ms']):.0f}, max {max(page['key_moves_ms']):.0f}; a drag "
                  f"{page['drag_ms']:.0f} ms) -> {path.relative_to(ROOT)}", flush=True)


class PageLog:
    """Console errors and uncaught exceptions of a page; requests leaving 127.0.0.1 answered empty and noted."""

    def __init__(self, context, page):
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), self._offline)

    @staticmethod
    def _offline(route):
        url = route.request.url
        if url not in RESULTS["external_requests"]:
            RESULTS["external_requests"].append(url)
        kind = "text/css" if ".css" in url else "application/octet-stream"
        route.fulfill(status=200, body="", content_type=kind)

    def check(self, where: str) -> None:
        assert not self.errors, f"browser console errors ({where}):\n" + "\n".join(self.errors)


@pytest.fixture(scope="module")
def trajectories():
    """The shipped trajectories the explorers read (notebook 03 and `mkv explore` both use them)."""
    found = {k: Trajectory.load(p) for k in ("pca", "trained")
             if (p := shipped_trajectory_path(EMBEDDED, k)).exists()}
    assert "trained" in found, "the shipped trained trajectory is missing"
    return found


# --- JupyterLab ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(out_dir, tmp_path_factory):
    """JupyterLab on 127.0.0.1 over copies of notebooks 03 and 05; yields its base URL and token."""
    root = tmp_path_factory.mktemp("lab")
    notebooks, settings, config = root / "notebooks", root / "settings", root / "config"
    notebooks.mkdir()
    config.mkdir()
    source = Path(os.environ.get("MKV_BROWSER_NOTEBOOKS") or ROOT / "notebooks")   # another folder: e.g. a commit's
    for name in NOTEBOOKS:
        shutil.copy(source / name, notebooks / name)
    for plugin, values in LAB_SETTINGS.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), "mkv-browser-test"
    log = out_dir / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}",
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={root / 'workspaces'}",
               *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])]
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=dict(server_env(), JUPYTER_CONFIG_DIR=str(config)))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{base}/api/status?token={token}"), 120, "JupyterLab did not start", process, log)
        yield {"base": base, "token": token, "root": notebooks}
    finally:
        stop(process)


def open_page(chromium, url: str):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    log = PageLog(context, page)
    page.goto(url, timeout=120_000)
    return context, page, log


def run_all_in_lab(page, name: str, out_dir: Path, saved: Path) -> None:
    """Run > Run All Cells, then wait until no cell is queued or running and the kernel is idle; every code cell
    must then carry an execution count (JupyterLab stops at a failing cell and leaves the rest unnumbered), and
    the notebook saved to ``saved`` must hold no error output."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    # the status bar names the kernel and says Idle once it is connected ('No Kernel | Idle' before that)
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"^(?!No Kernel).+ \| Idle$")).wait_for(
        timeout=120_000)
    for attempt in range(3):     # a Run All given while the kernel still connects runs nothing: give it again
        dialog = page.locator(".jp-Dialog")
        page.wait_for_timeout(1000)
        if dialog.count():
            page.screenshot(path=str(out_dir / f"{name[:2]}_dialog.png"))
            pytest.fail(f"{name}: JupyterLab shows a dialog: {dialog.first.inner_text()!r}")
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.get_by_text("Run All Cells", exact=True).click()
        try:
            page.wait_for_function(f"""() => [...document.querySelectorAll('{PROMPTS}')]
                .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))""", timeout=30_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    page.wait_for_function(f"""() => {{
        const prompts = [...document.querySelectorAll('{PROMPTS}')];
        const kernel = document.querySelector('.jp-Notebook-ExecutionIndicator');
        return prompts.length > 0 && prompts.every(p => !p.textContent.includes('*'))
               && kernel && kernel.dataset.status === 'idle';
    }}""", timeout=RUN_ALL_TIMEOUT_S * 1000, polling=1000)
    prompts = page.locator(PROMPTS).all_text_contents()
    unrun = [i for i, p in enumerate(prompts) if not re.fullmatch(r"\s*\[\d+\]:\s*", p)]
    page.screenshot(path=str(out_dir / f"{name[:2]}_after_run_all.png"))
    errors = saved_errors(page, saved)
    assert not errors and not unrun, (f"{name} in JupyterLab: errors {errors or 'none'}; code cells {unrun or 'none'} "
                                      "did not run")


def saved_errors(page, path: Path) -> list[str]:
    """Save the notebook (Ctrl+S) and list the error outputs written to it."""
    import nbformat

    before = path.stat().st_mtime
    page.keyboard.press("Escape")                  # command mode in the notebook that just ran
    page.keyboard.press("Control+s")
    wait_until(lambda: path.stat().st_mtime > before, 60, f"{path.name} was not saved")
    time.sleep(0.5)
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    return [f"code cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, cell in enumerate(code)
            for o in cell.outputs if o.output_type == "error"]


def check_no_widget_errors(page, where: str) -> None:
    shown = page.get_by_text("Error displaying widget").count()
    assert shown == 0, f"{where}: {shown} widget(s) show 'Error displaying widget'"


# --- the explorer, wherever it is shown ---------------------------------------------------------------------------

class ExplorerPage:
    """The explorer's controls in a page, and the readout the trajectory gives for the settings shown."""

    def __init__(self, page, trajectories: dict):
        self.page, self.trajectories = page, trajectories
        self.root = page.locator(".mkv-explorer").last
        self.floor = max(t.final_budget for t in trajectories.values())
        self.handle = self.root.locator(".widget-slider .noUi-handle")
        self.typed = self.root.locator(".mkv-typed-budget input")
        self.projections = self.root.locator(".widget-dropdown", has_text="projections").locator("select")
        self.split = self.root.locator(".widget-dropdown", has_text="K/V split").locator("select")
        self.readout = self.root.locator(".mkv-readout code")
        self.note = self.root.locator(".mkv-note")
        self.image = self.root.locator("img.mkv-ranks")
        self.prompt = self.root.locator(".widget-text input[type=text]")
        self.button = self.root.locator("button.widget-button")
        self.generated = self.root.locator(".mkv-generated")

    def budget(self) -> float:
        """The slider's value, as the 'budget %' box shows it (exact for the slider's steps of 1/64)."""
        return float(self.typed.input_value()) / 100

    def allocation(self) -> str:
        return self.root.locator(".widget-toggle-button.mod-active").inner_text().strip()

    def key_share(self):
        return KV_SPLITS[self.split.input_value()]

    def expected_readout(self) -> str:
        """What the trajectory gives for the settings shown: its ranks at the slider's budget and the quality
        precomputed at their budget."""
        traj = self.trajectories[self.projections.input_value()]
        allocation, budget, share = self.allocation(), self.budget(), self.key_share()
        ranks = explorer_ranks(traj, allocation, budget, share)
        return readout_text(readout(traj, allocation, budget, ranks, share))

    def state(self) -> tuple[str, str, str]:
        return self.readout.inner_text(), self.image.get_attribute("src"), self.typed.input_value()

    def after(self, before: tuple, action, what: str, changes_image: bool = True) -> None:
        """Do ``action``; wait until the readout (or the typed budget) changed and, when ``changes_image``, the
        heat maps got a new image; then the readout must be the trajectory's for the new settings."""
        action()
        self.page.wait_for_function(
            """([root, before, image]) => {
                const text = root.querySelector('.mkv-readout code').innerText;
                const src = root.querySelector('img.mkv-ranks').getAttribute('src');
                const typed = root.querySelector('.mkv-typed-budget input').value;
                return (text !== before[0] || typed !== before[2]) && (!image || src !== before[1]);
            }""", arg=[self.root.element_handle(), list(before), changes_image], timeout=UPDATE_TIMEOUT_MS)
        self.page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=self.image.element_handle())
        self.check_readout(what)

    def check_readout(self, what: str) -> None:
        expected = self.expected_readout()
        assert self.readout.inner_text() == expected, f"{what}: the readout is not the trajectory's"

    def drag_to(self, budget: float) -> None:
        self.handle.scroll_into_view_if_needed()
        track, knob = self.root.locator(".noUi-base").bounding_box(), self.handle.bounding_box()
        x = track["x"] + (budget - self.floor) / (1 - self.floor) * track["width"]
        y = knob["y"] + knob["height"] / 2
        self.page.mouse.move(knob["x"] + knob["width"] / 2, y)
        self.page.mouse.down()
        self.page.mouse.move(x, y, steps=10)
        self.page.mouse.move(x - 4 if budget <= self.floor else x, y)     # past the left end: stays at the floor
        self.page.mouse.up()

    def type_budget(self, percent: str) -> None:
        self.typed.fill(percent)
        self.typed.press("Enter")

    def timed_key_moves(self, moves: int) -> list[float]:
        """Milliseconds from each ArrowLeft on the slider's handle to the redrawn image, one step of 1/64 each."""
        self.image.evaluate(REDRAW_PROBE)
        self.handle.focus()
        times = []
        for i in range(moves):
            before = self.state()
            expected_budget = round((self.budget() - SLIDER_STEP) * 64) / 64
            self.after(before, lambda: self.page.keyboard.press("ArrowLeft"), f"key move {i + 1}")
            assert self.budget() == pytest.approx(expected_budget), "one key press moves the slider one step"
            self.page.wait_for_function("() => window.__mkvRedraw.drawn !== null", timeout=UPDATE_TIMEOUT_MS)
            times.append(self.page.evaluate("() => window.__mkvRedraw.drawn - window.__mkvRedraw.start"))
        return times

    def timed_drag(self, budget: float) -> float:
        self.image.evaluate(REDRAW_PROBE)
        self.after(self.state(), lambda: self.drag_to(budget), f"drag to {budget:.0%}")
        self.page.wait_for_function("() => window.__mkvRedraw.drawn !== null", timeout=UPDATE_TIMEOUT_MS)
        return self.page.evaluate("() => window.__mkvRedraw.drawn - window.__mkvRedraw.start")


def drive_explorer(page, trajectories: dict, name: str, label: str, out_dir: Path) -> None:
    """Every control of the explorer, the readout checked against the trajectory after each; the redraw timed."""
    ex = ExplorerPage(page, trajectories)
    ex.root.scroll_into_view_if_needed()
    assert ex.projections.input_value() == "trained", "the explorer opens on the shipped trained projections"
    assert ex.allocation() == "adaptive" and ex.budget() == 0.5 and ex.key_share() is None
    ex.check_readout("as opened")
    heat_map_before = ex.image.screenshot()

    drag_ms = ex.timed_drag(0.25)                                 # 50% -> 25%, the floor of the trajectories
    assert ex.budget() == pytest.approx(ex.floor)
    assert ex.image.screenshot() != heat_map_before, "the heat maps look the same after the drag"
    page.screenshot(path=str(out_dir / f"{name}_dragged_to_25.png"))

    ex.after(ex.state(), lambda: ex.type_budget("50"), "typed 50%")
    key_ms = ex.timed_key_moves(MOVES)                            # 50% -> 34.4% by ArrowLeft
    ex.after(ex.state(), lambda: (ex.handle.focus(), page.keyboard.press("ArrowRight")), "ArrowRight")

    ex.after(ex.state(), lambda: ex.root.locator(".widget-toggle-button", has_text="uniform").click(), "uniform")
    assert ex.allocation() == "uniform"
    if "pca" in trajectories:
        ex.after(ex.state(), lambda: ex.projections.select_option("pca"), "pca projections")
    ex.after(ex.state(), lambda: ex.split.select_option("K = V"), "K = V")
    assert "precomputed for the pooled split only" in ex.readout.inner_text()
    page.screenshot(path=str(out_dir / f"{name}_uniform_pca_k_equals_v.png"))
    ex.after(ex.state(), lambda: ex.split.select_option("as searched (pooled)"), "pooled split")
    ex.after(ex.state(), lambda: ex.projections.select_option("trained"), "trained projections")
    ex.after(ex.state(), lambda: ex.root.locator(".widget-toggle-button", has_text="adaptive").click(), "adaptive")

    # a budget typed outside the trajectories' range: clamped, with a note (it comes after the redraw)
    from playwright.sync_api import expect

    ex.after(ex.state(), lambda: ex.type_budget("5"), "typed 5%")
    assert ex.budget() == pytest.approx(ex.floor)
    expect(ex.note).to_have_text(f"5% is below {100 * ex.floor:g}%, the lowest budget the trajectories reach: "
                                 f"clamped to {100 * ex.floor:g}%", timeout=UPDATE_TIMEOUT_MS)
    page.screenshot(path=str(out_dir / f"{name}_typed_5_clamped.png"))
    ex.after(ex.state(), lambda: ex.type_budget("150"), "typed 150%")
    assert ex.budget() == 1.0
    expect(ex.note).to_have_text("150% is above 100% (the uncompressed cache): clamped to 100%",
                                 timeout=UPDATE_TIMEOUT_MS)
    ex.after(ex.state(), lambda: ex.type_budget("50"), "typed 50%")
    expect(ex.note).to_have_text("", timeout=UPDATE_TIMEOUT_MS)

    # generate: a continuation by the compressed model, then a prompt longer than the context window
    ex.button.click()
    page.wait_for_function("(el) => el.innerText.startsWith('[trained, adaptive, budget')",
                           arg=ex.generated.element_handle(), timeout=120_000)
    shown = ex.generated.inner_text()
    assert shown.startswith("[trained, adaptive, budget 50.0%] The history of the city begins")
    assert len(shown.split("begins", 1)[1].split()) >= 1, "generate added no text"
    page.screenshot(path=str(out_dir / f"{name}_generated.png"))
    ex.prompt.fill("word " * 9000)
    ex.button.click()
    page.wait_for_function("(el) => el.innerText.startsWith('cannot generate')", arg=ex.generated.element_handle(),
                           timeout=120_000)
    message = ex.generated.inner_text()
    assert "context window of 8,192 tokens" in message and "Traceback" not in page.content()
    page.screenshot(path=str(out_dir / f"{name}_prompt_too_long.png"))

    RESULTS["pages"][label] = {"moves": MOVES, "median_ms": round(statistics.median(key_ms), 1),
                               "key_moves_ms": [round(t, 1) for t in key_ms],
                               "mean_ms": round(statistics.fmean(key_ms), 1), "drag_ms": round(drag_ms, 1)}


# --- the tests --------------------------------------------------------------------------------------------------

def test_notebook_03_in_jupyterlab_and_its_explorer(chromium, lab, trajectories, out_dir):
    name = NOTEBOOKS[0]
    context, page, log = open_page(chromium, f"{lab['base']}/lab/tree/{name}?reset&token={lab['token']}")
    try:
        run_all_in_lab(page, name, out_dir, lab["root"] / name)
        check_no_widget_errors(page, name)
        drive_explorer(page, trajectories, "03", f"JupyterLab, notebook {name}", out_dir)
        check_no_widget_errors(page, name)
        log.check(name)
    finally:
        page.screenshot(path=str(out_dir / "03_last.png"))
        context.close()


def test_notebook_05_in_jupyterlab(chromium, lab, out_dir):
    name = NOTEBOOKS[1]
    context, page, log = open_page(chromium, f"{lab['base']}/lab/tree/{name}?reset&token={lab['token']}")
    try:
        run_all_in_lab(page, name, out_dir, lab["root"] / name)
        check_no_widget_errors(page, name)
        log.check(name)
    finally:
        context.close()


@pytest.fixture(scope="module")
def explore_page(out_dir):
    """`mkv explore --port 0 --no-browser`, started as a user would; yields the URL it prints."""
    log = out_dir / "mkv_explore.log"
    with open(log, "w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "mkvlib", "explore", "--port", "0", "--no-browser"],
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=server_env())
    try:
        def printed_url():
            found = re.search(r"serving explorer\.ipynb at (http://127\.0\.0\.1:(\d+)/)", log.read_text())
            return found and found.groups()

        url, port = wait_until(printed_url, 60, "mkv explore printed no URL", process, log)

        def listening():
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", int(port))) == 0

        wait_until(listening, 120, f"nothing listens at {url}", process, log)
        yield url
    finally:
        stop(process)


def test_mkv_explore_page(chromium, explore_page, trajectories, out_dir):
    context, page, log = open_page(chromium, explore_page)
    try:
        page.wait_for_selector(".mkv-explorer img.mkv-ranks", timeout=180_000)
        page.screenshot(path=str(out_dir / "explore_opened.png"))
        code_cells = page.locator(".jp-CodeCell")
        assert code_cells.count() >= 1 and code_cells.count() == page.locator(".jp-CodeCell.jp-mod-noInput").count()
        assert page.locator(".jp-CodeCell .jp-InputArea, .jp-InputPrompt, .CodeMirror, .cm-editor").count() == 0, \
            "the page shows code"
        assert "shipped_explorer" not in page.content(), "the page carries the notebook's source"
        assert page.get_by_text("There was an error when executing cell").count() == 0
        assert page.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
        assert page.locator(".mkv-explorer").count() == 1 and page.locator(".widget-hprogress").count() == 0
        check_no_widget_errors(page, "mkv explore")
        drive_explorer(page, trajectories, "explore", "mkv explore (Voila)", out_dir)
        check_no_widget_errors(page, "mkv explore")
        log.check("mkv explore")
    finally:
        page.screenshot(path=str(out_dir / "explore_last.png"))
        context.close()
