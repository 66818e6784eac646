"""The Snakemake report, checked in a real browser.

A tiny modular config runs through the real ``snakemake`` in a temporary copy of the workflow,
then ``snakemake --report report.html`` builds the self-contained report. The tests check that

* every PNG figure listed in ``results/summary.json`` (and the science layer's figures) is
  embedded in the report as a decodable PNG with a caption, and the scorecard is embedded too;
* headless Chromium loads the page, the app renders its navigation, and clicking through every
  category and result in the real page shows each figure as a decoded image (natural size > 0)
  and the scorecard page.

Chromium: the Debian package ``chromium`` (``.ci/services/chromium.sh`` installs it). Without a
browser the browser tests are skipped with a reason, except when ``CI=true``, where they fail.
Set ``NHT_CHROMIUM`` to use another Chromium/Chrome binary.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import copy_workflow, run_snakemake, tiny_modular

pytestmark = pytest.mark.slow

SCIENCE_FIGURES = ("delay_law_bootstrap", "prospective", "norm_fits", "decay_rate",
                   "clean_separation")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    env = os.environ.get("NHT_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no Chromium found: .ci/services/chromium.sh should have "
                        "installed the Debian package 'chromium'")
        pytest.skip("Chromium not installed (Debian: apt-get install chromium, or set "
                    "NHT_CHROMIUM); the report must be checked in a real browser")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Run the tiny workflow and build its report; returns (workdir, report path, summary)."""
    # two cells trained in one job: the report's content, not the science, is under test here
    config = {"experiments": {"tiny": tiny_modular(
        weight_decay=[0.5, 2.0], init_scale=[1], batch_over=["lr", "init_scale", "seed", "weight_decay"])}}
    wd = copy_workflow(tmp_path_factory.mktemp("report"), config)
    run_snakemake(wd, "--cores", "2")
    run_snakemake(wd, "--report", "report.html")
    path = wd / "report.html"
    assert path.exists() and path.stat().st_size > 0
    with open(wd / "results" / "summary.json") as fh:
        summary = json.load(fh)
    return wd, path, summary


def embedded(report_html: str, var: str) -> dict:
    """The JSON object the report assigns to ``var`` (``results``, ``categories``)."""
    m = re.search(r"<script id=\"%s\">\s*var %s = " % (re.escape(var), re.escape(var)), report_html)
    assert m, f"report has no '{var}' data block (Snakemake report layout changed?)"
    obj, _ = json.JSONDecoder().raw_decode(report_html, m.end())
    return obj


def _decode(data_uri: str) -> bytes:
    return base64.b64decode(data_uri.split(";base64,", 1)[1])


def _rel(wd: Path, path: str) -> str:
    p = Path(path)
    return str(p.relative_to(wd)) if p.is_absolute() else str(p)


def test_report_embeds_every_figure_and_the_scorecard(report):
    wd, path, summary = report
    text = path.read_text()
    results = embedded(text, "results")
    assert results, ("the report embeds no result: mark the figure outputs with "
                     "report(..., caption=..., category=...) in workflow/rules/*.smk")
    # self-contained: nothing is fetched from outside the file
    assert not re.search(r"""(src|href)=["']https?://""", text)
    expected = set()
    for name, exp in summary["experiments"].items():
        figs = {_rel(wd, f) for f in exp.get("figures", []) if f.endswith(".png")}
        assert figs, f"experiment {name} lists no PNG figure in summary.json"
        if exp.get("kind") == "modular":
            stems = {Path(f).stem for f in figs}
            missing = [s for s in SCIENCE_FIGURES if s not in stems]
            assert not missing, f"{name}: science figures missing from summary.json: {missing}"
        expected |= figs
    by_path = {_rel(wd, k): v for k, v in results.items()}
    missing = sorted(expected - set(by_path))
    assert not missing, f"figures not in the report: {missing}"
    for f in expected:
        res = by_path[f]
        assert res["mime_type"] == "image/png", f
        assert _decode(res["data_uri"]).startswith(PNG_MAGIC), f
        assert re.sub(r"<[^>]+>", "", res.get("caption") or "").strip(), f"{f} has no caption"
    score = [k for k in by_path if "scorecard" in Path(k).name.lower()]
    assert score, "the scorecard is not in the report"
    assert any(b"P6" in _decode(by_path[k]["data_uri"]) for k in score)


HARNESS = r"""<!doctype html><html><body><pre id="out">pending</pre>
<iframe id="f" src="REPORT" style="width:1400px;height:900px"></iframe>
<script>
const out = document.getElementById('out'), log = [];
const sleep = ms => new Promise(r => setTimeout(r, ms));
const w = () => document.getElementById('f').contentWindow;
const d = () => document.getElementById('f').contentDocument;
const link = t => [...d().querySelectorAll('a')].find(e => e.textContent.trim() === t);
const row = ts => [...d().querySelectorAll('td')].find(e => ts.includes(e.textContent.trim()));
async function main() {
  for (let i = 0; i < 300; i++) { const x = d(); if (x && x.querySelector('#app nav')) break; await sleep(100); }
  const nav = d().querySelector('#app nav');
  log.push({step: 'loaded', nav: nav ? nav.innerText : null,
            loading_hidden: getComputedStyle(d().getElementById('loading-screen')).display === 'none'});
  const cats = w().categories || {};
  for (const cat of Object.keys(cats)) for (const sub of Object.keys(cats[cat])) for (const res of cats[cat][sub]) {
    let c = link(cat);
    if (!c && link('Results')) { link('Results').click(); await sleep(300); c = link(cat); }
    if (!c) { log.push({res, error: 'no link to category ' + cat}); continue; }
    c.click(); await sleep(300);
    const names = [res, w().results[res].name, w().results[res].filename];
    let td = row(names);
    if (!td && link(sub)) { link(sub).click(); await sleep(300); td = row(names); }
    if (!td) { log.push({res, error: 'no row', text: d().body.innerText.slice(0, 300)}); continue; }
    const eye = td.parentElement.querySelector('a[iconname="eye"]');
    if (!eye) { log.push({res, error: 'no view button'}); continue; }
    eye.click(); await sleep(600);
    const imgs = [...d().querySelectorAll('img')].filter(i => i.src.startsWith('data:image/png'))
      .map(i => [i.naturalWidth, i.naturalHeight]);
    const frames = [...d().querySelectorAll('iframe, embed, object')].map(f => (f.src || f.data || '').slice(0, 30));
    log.push({res, mime: w().results[res].mime_type, imgs, frames});
  }
  out.textContent = JSON.stringify(log);
}
main().catch(e => { out.textContent = JSON.stringify([{error: String(e)}].concat(log)); });
</script></body></html>
"""


def run_chromium(chromium: str, tmp: Path, url: str, *extra: str, timeout: int = 180) -> str:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chrome-profile'}", *extra, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


def test_report_loads_in_chromium_and_shows_every_figure(report, chromium, tmp_path):
    wd, path, _ = report
    results = embedded(path.read_text(), "results")
    assert results, "the report embeds no result: nothing to show in the browser"
    # 1. the page itself: scripts run and the app renders its navigation
    dom = run_chromium(chromium, tmp_path, path.as_uri(), "--virtual-time-budget=15000",
                       "--dump-dom")
    app = re.search(r'<div id="app">(.*)', dom, re.S)
    assert app and "<nav" in app.group(1), "the report's app did not render in Chromium"
    # 2. click through every result in the real page (a harness page drives the report in an
    #    iframe; --allow-file-access-from-files lets it reach the iframe's document)
    harness = wd / "harness.html"
    harness.write_text(HARNESS.replace("REPORT", path.name))
    dom = run_chromium(chromium, tmp_path, harness.as_uri(), "--allow-file-access-from-files",
                       "--virtual-time-budget=120000", "--dump-dom")
    m = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert m, "harness produced no output"
    log = json.loads(html.unescape(m.group(1)))
    assert log and log[0].get("step") == "loaded", log[:2]
    assert log[0]["loading_hidden"], "the loading screen never went away"
    seen = {e["res"]: e for e in log[1:]}
    errors = [e for e in log if "error" in e]
    assert not errors, errors
    for key, res in results.items():
        assert key in seen, f"{key} could not be opened from the report's navigation"
        if res["mime_type"] == "image/png":
            assert seen[key]["imgs"], f"{key}: no image shown"
            assert all(wd_ > 0 and h > 0 for wd_, h in seen[key]["imgs"]), f"{key}: image not decoded"
        elif res["mime_type"] == "text/html":
            assert seen[key]["frames"], f"{key}: HTML result not shown"
    # 3. a screenshot of the landing page is not blank
    shot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path, path.as_uri(), "--virtual-time-budget=15000",
                 "--window-size=1280,900", f"--screenshot={shot}")
    from PIL import Image

    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 10, "the screenshot of the report is blank"
