"""The series as a reader meets it: JupyterLab 4 in a real browser (Chromium via Playwright).

JupyterLab is started from this environment on a free local port, with a token,
in a temporary copy of notebooks 03 and 04 and a temporary output folder, in the
smoke preset. For each notebook the test checks that it opens unmodified (no ●
before anything runs), runs all cells, finds no error output, moves every
denoising slider with the keyboard and by dragging and checks that the shown
frame changes (and that the slider spans the output), then checks that the GIFs
and exported figures exist, in ``figures/smoke/`` (never the default folder).

Needs Debian's ``chromium`` (``make test`` installs it when missing) and the PyPI
``playwright`` package, which drives that browser (browser downloads are not
possible here). Without either the test is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["03_weight_diffusion.ipynb", "04_catdog_latent_diffusion.ipynb"]
TOKEN = "ldt-browser-test"
RUN_TIMEOUT_S = 240  # one notebook's Run All, smoke preset


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a temporary copy of the notebooks; yields (url, folders)."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (make test installs Debian's chromium; apt-get failed?)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")

    base = tmp_path_factory.mktemp("browser")
    nb_dir, out = base / "notebooks", base / "out"
    nb_dir.mkdir()
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, nb_dir / name)
    # JupyterLab settings of its own: render every cell (no windowing), no news or update checks
    settings = base / "lab-settings"
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = _free_port()
    env = {**os.environ, "LDT_PRESET": "smoke", "LDT_OUTPUT_DIR": str(out),
           "LDT_RUN_DIR": str(out / "runs" / "browser"), "LDT_PROGRESS": "0",
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(base / "ws"),
           "JUPYTER_RUNTIME_DIR": str(base / "runtime"), "JUPYTER_CONFIG_DIR": str(base / "config")}
    log = open(base / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--allow-root", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={nb_dir}",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=nb_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start; its log:\n{(base / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield {"url": url, "chromium": chromium, "notebooks": nb_dir, "out": out, "base": base}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=lab["chromium"],
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


# --- helpers that read JupyterLab's page ---------------------------------------

def _wait_kernel_idle(page, timeout_s: float = 60) -> None:
    page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator"
                           "[data-status='idle']", timeout=timeout_s * 1000)


def _tab_is_dirty(page, name: str) -> bool:
    """Whether the main-area tab of notebook ``name`` shows JupyterLab's unsaved-changes mark.

    The tab is found by its title, not as "the current tab": when a second notebook is opened,
    JupyterLab restores the first one's tab too, and for a moment that one may be current."""
    tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text=name).first
    tab.wait_for(timeout=30_000)
    return "jp-mod-dirty" in (tab.get_attribute("class") or "")


def _prompts(page) -> list[str]:
    return page.eval_on_selector_all(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt",
                                     "els => els.map(e => e.textContent.trim())")


def _run_all(page) -> float:
    """Run > Run All Cells; wait until every code cell has run (or one failed); return seconds."""
    start = time.monotonic()
    started = ("() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell "
               ".jp-InputPrompt')].some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))")
    for attempt in range(3):  # the item is disabled until the kernel is ready: try again
        page.keyboard.press("Escape")
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        item = page.locator(".lm-Menu-item:has(.lm-Menu-itemLabel:text-is('Run All Cells'))").first
        disabled = "lm-mod-disabled" in (item.get_attribute("class") or "")
        item.click()
        try:
            page.wait_for_function(started, timeout=10_000)
            break
        except Exception:
            print(f"Run All: menu attempt {attempt + 1} did not start the cells"
                  f"{' (item disabled)' if disabled else ''}")
    else:  # the menu never took the click: the same command, run directly
        print("Run All: running the menu's command directly")
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = start + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        prompts = _prompts(page)
        busy = any("*" in p for p in prompts)
        if not busy and prompts and all(any(ch.isdigit() for ch in p) for p in prompts):
            break
        if not busy and _errors(page):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"Run All did not finish in {RUN_TIMEOUT_S} s; prompts {_prompts(page)}")
    return time.monotonic() - start


def _errors(page) -> list[str]:
    return page.eval_on_selector_all(
        ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error'],"
        ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output [data-mime-type='application/vnd.jupyter.error']",
        "els => els.map(e => e.textContent.slice(0, 2000))")


def _slider_widgets(page):
    """(track, handle, image) locators of every slider whose box also holds an image."""
    boxes = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-vbox:has(.widget-slider):has(img)")
    out = []
    for i in range(boxes.count()):
        box = boxes.nth(i)
        out.append((box.locator(".widget-slider .noUi-target, .widget-slider .slider").first,
                    box.locator(".noUi-handle, .ui-slider-handle").first, box.locator("img").first, box))
    return out


def _wait_src_change(image, old: str, what: str, timeout_s: float = 20) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        src = image.get_attribute("src")
        if src and src != old:
            return src
        time.sleep(0.2)
    raise AssertionError(f"the displayed frame did not change after {what}")


@pytest.mark.browser
def test_notebooks_run_in_jupyterlab_and_sliders_move(lab, browser):
    timings, dirty = {}, []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        for name in NOTEBOOKS:
            page.goto(f"{lab['url']}/lab/tree/{name}?token={TOKEN}")
            page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook", timeout=90_000)
            _wait_kernel_idle(page, 90)
            page.wait_for_timeout(1000)  # metadata updates arrive right after the kernel connects
            stored = json.loads((ROOT / "notebooks" / name).read_text())["metadata"]
            version = stored.get("language_info", {}).get("version")
            # (a notebook stored by another Python version is rewritten by any JupyterLab)
            if version in (None, platform.python_version()):
                if _tab_is_dirty(page, name):  # checked at the end, after the rest has been tried
                    dirty.append(name)

            timings[name] = _run_all(page)
            errors = _errors(page)
            assert not errors, f"{name}: error output after Run All:\n" + "\n---\n".join(errors)
            prompts = _prompts(page)
            assert prompts and all(any(ch.isdigit() for ch in p) for p in prompts), f"{name}: not every cell ran: {prompts}"

            sliders = _slider_widgets(page)
            assert sliders, f"{name}: no slider with an image after Run All"
            for k, (track, handle, image, box) in enumerate(sliders):
                box.scroll_into_view_if_needed()
                area = box.locator("xpath=ancestor::div[contains(@class,'jp-OutputArea-output')][1]")
                track_w, area_w = track.bounding_box()["width"], area.bounding_box()["width"]
                assert track_w >= 0.6 * area_w, f"{name} slider {k}: track {track_w:.0f} px of {area_w:.0f} px"
                # keyboard: focus the handle, then End jumps to the last frame
                src0 = image.get_attribute("src")
                handle.click()
                page.keyboard.press("End")
                src1 = _wait_src_change(image, src0, f"pressing End on slider {k} of {name}")
                page.keyboard.press("ArrowLeft")
                src2 = _wait_src_change(image, src1, f"pressing ArrowLeft on slider {k} of {name}")
                # drag: from where the handle is to a third of the track
                hb, tb = handle.bounding_box(), track.bounding_box()
                page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2)
                page.mouse.down()
                page.mouse.move(tb["x"] + tb["width"] / 3, tb["y"] + tb["height"] / 2, steps=12)
                page.mouse.up()
                _wait_src_change(image, src2, f"dragging slider {k} of {name}")
        page.screenshot(path=str(lab["base"] / "last.png"))
    except Exception:
        page.screenshot(path=str(lab["base"] / "failure.png"))
        print(f"screenshot: {lab['base'] / 'failure.png'}; JupyterLab log: {lab['base'] / 'lab.log'}")
        raise
    finally:
        page.close()

    figures = lab["out"] / "figures"
    for name in NOTEBOOKS:
        prefix = name[:2]
        pngs = sorted((figures / "smoke").glob(f"{prefix}_*.png"))
        gifs = sorted((figures / "smoke").glob(f"{prefix}_*.gif"))
        assert pngs and all((p.with_suffix(".pdf")).exists() for p in pngs), f"{name}: figures {pngs}"
        assert gifs and all(g.stat().st_size > 1000 for g in gifs), f"{name}: GIFs {gifs}"
    assert not list(figures.glob("*.png")) and not list(figures.glob("*.gif")), \
        "a smoke run wrote into the default preset's figures folder"
    print("Run All seconds: " + ", ".join(f"{n[:2]} {s:.0f} s" for n, s in timings.items()))
    assert not dirty, (f"{dirty} marked modified as soon as they open in JupyterLab: store them as "
                       "JupyterLab writes them (`make strip`)")
