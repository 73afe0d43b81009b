"""Open report.html (and a test.py page) in a real headless Chromium: plots load, galleries render, sorting works.

Needs selenium and a Chromium with its chromedriver (`.ci/run` installs them: Debian `chromium chromium-driver`,
`pip install selenium`); skipped with the reason where they cannot be installed. No network: file:// pages only.
"""
import re
import shutil

import pytest

from tests.test_evaluate import _make_run

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
pytest.importorskip("matplotlib")

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="no headless Chromium + chromedriver here (apt-get install chromium "
                                       "chromium-driver)")


@pytest.fixture(autouse=True)
def _no_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    yield drv
    drv.quit()


def _loaded_images(drv, timeout: float = 15.0):
    """``[src, loaded]`` for every image of the page, once all have loaded or ``timeout`` seconds have passed (a
    loaded CI machine may still be decoding when the load event has fired)."""
    import time

    script = ("return Array.from(document.images).map(i => [i.getAttribute('src'), "
              "i.complete && i.naturalWidth > 0]);")
    deadline = time.monotonic() + timeout
    imgs = drv.execute_script(script)
    while not all(ok for _, ok in imgs) and time.monotonic() < deadline:
        time.sleep(0.2)
        imgs = drv.execute_script(script)
    return imgs


def _column(drv, col):
    return drv.execute_script(
        "return Array.from(document.querySelectorAll('#per-image tbody tr'))"
        f".map(r => r.cells[{col}].getAttribute('data-v'));")


def test_report_renders_and_sorts_in_chromium(tmp_path, browser, capsys):
    import evaluate

    exp = tmp_path / "exp #1"
    _make_run(exp, n=6, identical=())
    assert evaluate.main(["--result_path", str(exp), "--no_progress", "--num_workers", "1",
                          "--report_gallery", "3"]) == 0
    page = exp / "test_latest" / "report.html"
    browser.get(page.as_uri())
    imgs = _loaded_images(browser)
    plots = [s for s, ok in imgs if s.startswith("report_")]
    assert len(plots) == 3 and all(ok for _, ok in imgs), imgs
    assert len(browser.find_elements("css selector", "table.gallery.best tr")) == 3
    assert len(browser.find_elements("css selector", "table.gallery.worst tr")) == 3
    psnr_header = browser.find_elements("css selector", "#per-image thead th")[2]
    assert psnr_header.text == "PSNR (dB)"
    psnr_header.click()
    asc = [float(v) for v in _column(browser, 2)]
    assert asc == sorted(asc) and len(asc) == 6
    psnr_header.click()
    desc = [float(v) for v in _column(browser, 2)]
    assert desc == sorted(asc, reverse=True)
    browser.find_elements("css selector", "#per-image thead th")[0].click()
    names = _column(browser, 0)
    assert names == sorted(names)
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_test_page_labels_and_links_to_the_report_in_chromium(tmp_path, browser):
    import evaluate
    from tests.test_result_page import write_page

    run = tmp_path / "exp" / "test_latest"
    write_page(run, n=4)
    assert evaluate.main(["--result_path", str(tmp_path / "exp"), "--no_progress", "--num_workers", "1"]) == 0
    browser.get((run / "index.html").as_uri())
    imgs = _loaded_images(browser)
    assert len(imgs) == 12 and all(ok for _, ok in imgs), imgs
    captions = [e.text for e in browser.find_elements("css selector", "table.images p")]
    assert captions.count("H&E") == captions.count("virtual IHC") == captions.count("real IHC") == 4
    headers = [e.text for e in browser.find_elements("css selector", "h3")]
    assert all(re.search(r": PSNR \d+\.\d\d dB, SSIM [01]\.\d{4}$", h) for h in headers), headers
    browser.find_element("link text", "report.html").click()
    assert browser.current_url.endswith("/report.html")
    assert browser.find_elements("css selector", "table.gallery.best tr")
