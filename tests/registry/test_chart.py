"""Integration: GET /servers/{id}/chart draws the metrics read path, checked in Chromium, under
its own Content-Security-Policy (served as a header, and in the page for a saved copy)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from registry.headers import source_hash
from tests.registry.harness import Api, server_with_rows

pytestmark = pytest.mark.integration


def dump_dom(page: Path) -> tuple[str, str]:
    """The DOM after Chromium loaded the page and ran its scripts, and the page's console
    messages (a Content-Security-Policy refusal among them)."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: infra/scripts/system-deps.sh --test installs it"
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True,
        timeout=60,
        check=True,
    )  # fmt: skip
    console = [line for line in out.stderr.decode().splitlines() if ":CONSOLE" in line]
    return out.stdout.decode(), "\n".join(console)


def test_the_chart_page_draws_the_series_in_a_browser(
    api: Api, admin_token: str, tmp_path: Path
) -> None:
    # The permission of the metrics API: a plain user's token.
    server_id, user_token, params = server_with_rows(
        api,
        admin_token,
        [(0, 10.0), (5, 30.0), (60, 20.0), (180, 50.0), (240, 60.0)],
        5,
        name="db 7",
    )
    r = api.request("GET", f"/servers/{server_id}/chart", user_token, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.search(r"""(src|href)=|url\(|@import""", html)  # nothing fetched
    assert "db 7" in html and 'data-points="4"' in html  # 4 of 5 minutes have data
    # Its one script and one style element, allowed by hash; no style attribute anywhere.
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    assert " style=" not in html
    policy = (
        f"default-src 'none'; script-src {source_hash(script)}; style-src {source_hash(style)}; "
        "base-uri 'none'; form-action 'none'"
    )
    assert r.headers.get_list("content-security-policy") == [f"{policy}; frame-ancestors 'none'"]
    assert f'<meta http-equiv="Content-Security-Policy" content="{policy}">' in html
    assert r.headers["x-frame-options"] == "DENY"

    page = tmp_path / "chart.html"
    page.write_text(html)
    dom, console = dump_dom(page)
    assert "Content Security Policy" not in console, console  # its script and style both ran
    # 4 minutes with data: CPU avg+max, memory avg+max, disk, network rx+tx = 7 dots each.
    drawn = re.search(r'data-drawn-points="(\d+)"', dom)
    assert drawn, dom[:2000]
    assert int(drawn.group(1)) == 4 * 7
    length = re.search(r'data-drawn-length="(\d+)"', dom)
    assert length and int(length.group(1)) > 0  # the lines were laid out, not just present

    # The browser does enforce the page's policy: with another script hash nothing runs.
    tampered = tmp_path / "tampered.html"
    tampered.write_text(html.replace(source_hash(script), source_hash(script + " ")))
    dom, console = dump_dom(tampered)
    assert "data-drawn-points" not in dom and "Content Security Policy" in console
