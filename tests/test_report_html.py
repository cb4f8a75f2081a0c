"""report.html: written next to every run and comparison, self-contained, escaped, and rendered in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import write_class_images

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("ADVISOR_TEST_ARTIFACTS", REPO / "test-artifacts"))
HOSTILE = "cat<b>&\"x\""  # a class folder name that is also HTML


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from advisor.execute.runner import auto_run

    tmp = tmp_path_factory.mktemp("report")
    data = write_class_images(tmp / "pets", {HOSTILE: 10, "dog": 10}, size=36)
    out = auto_run(data, backbone="test/tiny-cnn", runs_dir=tmp / "runs", input_size=32, num_workers=0,
                   cache_dir=tmp / "cache", strategy="full-finetune", epochs=2)
    return out


def test_every_run_writes_a_self_contained_escaped_report(finished_run):
    page = (Path(finished_run.run_dir) / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()  # readable without JavaScript
    # nothing is fetched: no external URL in any src/href, images are data URIs
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert all(src.startswith("data:image/") for src in re.findall(r'<img[^>]* src="([^"]+)"', page))
    # the hostile class name appears only escaped
    assert "cat<b>" not in page and "cat&lt;b&gt;&amp;&quot;x&quot;" in page
    m = finished_run.result.metrics
    assert f"{m.val_accuracy:.4f}" in page
    assert page.count("<svg") >= 3  # map, curves, confusion matrix
    assert "forced" in page  # the strategy was forced and the report says so
    # a finished run keeps its model and drops the resume checkpoint
    assert not (Path(finished_run.run_dir) / "checkpoints").exists() and "checkpoint" not in finished_run.result.artifacts


def test_report_command_rebuilds_the_page(finished_run, tmp_path):
    from advisor.report.html import write_report_html

    path = Path(finished_run.run_dir) / "report.html"
    before = path.read_text()
    path.unlink()
    assert write_report_html(finished_run.run_dir) == path and path.read_text() == before
    from advisor.core.errors import AdvisorError

    with pytest.raises(AdvisorError, match="neither a finished run nor a compare directory"):
        write_report_html(tmp_path)


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


_PROBE = """<script>
window.addEventListener('load', () => {
  const sizes = [...document.querySelectorAll('img, svg.fig')].map(e => {
    const r = e.getBoundingClientRect(); return [e.tagName, Math.round(r.width), Math.round(r.height)]; });
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(sizes);
  document.body.appendChild(pre);
});
</script>"""


def test_the_curve_caption_says_when_it_read_a_share_of_the_validation_split(finished_run):
    from advisor.report.html import _run_sections

    result, plan = finished_run.result, finished_run.plan
    n = result.metrics.n_val
    classes = [c.name for c in result.metrics.per_class]
    whole = "".join(_run_sections(plan, result, classes))
    assert result.selected["curve_images"] == n and "stratified subset" not in whole  # 4 validation images: all of them
    share = result.model_copy(update={"selected": {**result.selected, "curve_images": n - 1}})
    page = "".join(_run_sections(plan, share, classes))
    assert f"a stratified subset of {n - 1} of the {n} validation images" in page and "the reported accuracy is on all" in page


def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium); the browser check needs a real browser")
    page = Path(finished_run.run_dir) / "report.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    # 1. the page as shipped: console output (errors would be logged) and a screenshot
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    run = subprocess.run([browser, *flags, "--enable-logging=stderr", "--v=0", "--window-size=1000,3000",
                          f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    assert shot.is_file() and shot.stat().st_size > 10_000
    # 2. a copy with a probe script: every image and figure has a rendered size, the key numbers are in the DOM
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dom = subprocess.run([browser, *flags, "--window-size=1000,3000", "--virtual-time-budget=5000", "--dump-dom",
                          probed.as_uri()], capture_output=True, text=True, timeout=120).stdout
    sizes = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1))
    assert len(sizes) >= 3 and all(w > 0 and h > 0 for _, w, h in sizes), sizes
    m = finished_run.result.metrics
    assert f"{m.val_accuracy:.4f}" in dom
    for rule in finished_run.plan.rule_ids:
        if rule != "user":
            assert rule in dom
