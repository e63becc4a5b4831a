"""The `inspect` report in a real browser: Debian's headless Chromium (through Selenium and
chromedriver) opens index.html from a file:// URL after the folder was moved elsewhere, and
every image on the page must have loaded (naturalWidth > 0) and every table be there.

Skipped, with the reason, where Chromium cannot run (CI installs `chromium` and
`chromium-driver`: .ci/run)."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from disc_world import make_disc

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} missing (Debian: apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="isc-qk-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except Exception as e:  # no display libraries, a driver of another version...
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"headless Chromium cannot start here: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_every_image_loads_and_every_table_is_there(browser, tmp_path, run_cli):
    d = make_disc(tmp_path / "disc")
    refs = tmp_path / "refs"
    shutil.copytree(d.references, refs)
    (refs / "R000000.jpg").unlink()  # one shown image is missing: the placeholder must load instead
    out = tmp_path / "made-here"
    r = run_cli("inspect", "--ground-truth", d.gt, "--query", d.q_oracle, "--reference", d.r_oracle, "--name", "oracle",
                "--query-images", d.queries, "--reference-images", refs, "--out", out, "--manifest", d.manifest,
                "--compare-query", d.q_h5, "--compare-reference", d.r_h5, "--compare-name", "gist", "--show", "30")
    assert r.code == 0, r.err
    moved = tmp_path / "copied" / "elsewhere"
    shutil.copytree(out, moved)
    shutil.rmtree(out)  # the copy must stand on its own
    browser.get((moved / "index.html").as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(images) > 40
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert not broken, f"images that did not load: {broken[:5]}"
    assert all(not src.startswith(("/", "file:", "http")) for src, _, _ in images)
    assert any(src == "thumbs/missing.png" for src, _, _ in images)
    rows = browser.execute_script(
        "const n = s => Array.from(document.querySelectorAll(s)).map(t => t.rows.length);"
        "return {summary: n('#summary-table'), fp: n('table.fp-table'), missed: n('table.missed-table'),"
        " family: n('table.family-table'), compare: n('table.compare-table')}")
    assert rows["summary"] == [9]
    assert len(rows["fp"]) == 2 and min(rows["fp"]) > 1
    assert len(rows["missed"]) == 2 and min(rows["missed"]) > 1
    assert len(rows["family"]) == 2 and min(rows["family"]) > 5  # by family and by edit
    assert len(rows["compare"]) == 2 and max(rows["compare"]) > 1
    assert "oracle vs gist" in browser.title
