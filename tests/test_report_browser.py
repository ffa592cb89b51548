"""report.html in a real browser (headless Chromium): figures load, tables render, verdict marks show, no errors.

Runs where Debian's chromium is installed (.ci/run installs it).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

from report_fixture import write_all
from telly.config import parse_params
from telly.reporting.stage import run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Collects, once the page has loaded, what a reader would see; --dump-dom returns it with the page.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src) || e)), true);
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(" ")); __consoleError(...args); };
window.addEventListener("load", () => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  const seen = {
    images: [...document.images].map(i => ({loaded: i.complete && i.naturalWidth > 0, size: box(i)})),
    tables: [...document.querySelectorAll("table")].map(t => ({rows: t.rows.length, size: box(t)})),
    badges: [...document.querySelectorAll(".verdict")].map(b => ({
      text: b.textContent, size: box(b), background: getComputedStyle(b).backgroundColor})),
    errors: window.__errors,
  };
  const pre = document.createElement("pre");
  pre.id = "telly-probe";
  pre.textContent = JSON.stringify(seen);
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # --no-sandbox: Chromium's sandbox refuses to start as root (CI containers)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_html_in_headless_chromium(raw_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw_params["report"]["track"] = False
    write_all(tmp_path, holding=False)  # claims both ways: both kinds of marks on the page
    page = run(parse_params(raw_params)).parent / "report.html"
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("<head>", "<head>\n" + PROBE, 1))

    done = chromium("--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r'<pre id="telly-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:]
    seen = json.loads(html.unescape(found.group(1)))

    assert seen["errors"] == []
    assert len(seen["images"]) == 4 and all(i["loaded"] and min(i["size"]) > 50 for i in seen["images"])
    assert seen["tables"] and all(t["rows"] >= 2 and min(t["size"]) > 10 for t in seen["tables"])
    texts = {b["text"] for b in seen["badges"]}
    assert {"reproduced", "not reproduced"} <= texts
    # a badge is a coloured box with its word: visible without any emoji font
    for badge in seen["badges"]:
        assert badge["size"][0] > 20 and badge["size"][1] > 8, badge
        assert badge["background"] not in ("rgba(0, 0, 0, 0)", "transparent"), badge
    assert "Uncaught" not in done.stderr
