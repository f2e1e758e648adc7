"""`ssmbench leaderboard publish --html DIR`: the static site, its numbers, and its table in a real browser.

The site is built from the committed leaderboard (real rows) plus one training history. The table
pages must carry the markdown leaderboard's numbers; the browser test loads a page from disk in
headless Chromium (Debian's chromium + chromium-driver, driven by selenium) and sorts and filters
it through the DOM.
"""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from model_zoo.training.history import EpochRecord, write_history
from ssmbench.cli import main
from ssmbench.leaderboard import read
from ssmbench.leaderboard_render import leaderboard_lines, render_markdown
from ssmbench.site import build_site, curves
from ssmbench.site.build import board_href, family_href

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "leaderboards" / "results.parquet"
ACCURACIES = (0.2, 0.5, 0.8)


class _Table(HTMLParser):
    """The text of every body cell of the page's table.board, row by row (the reference reader)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.in_body = self.in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows.append([])
        elif tag == "td" and self.in_body:
            self.in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self.in_body = False
        elif tag == "td":
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        if self.in_cell:
            self.rows[-1][-1] += data.strip()


def _table_cells(page: Path) -> list[list[str]]:
    parser = _Table()
    parser.feed(page.read_text())
    return parser.rows


@pytest.fixture(scope="module")
def rows():
    return read(RESULTS)


@pytest.fixture(scope="module")
def run_with_history(rows) -> str:
    """The folder of the first row's checkpoint: it gets a history.parquet in the history root."""
    return str(Path(rows[0].model).parent)


@pytest.fixture(scope="module")
def site(rows, run_with_history, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("history-root")
    records = [EpochRecord(epoch=e, lr=1e-3, train_objective=1.0, train_clean_loss=1.0, train_clean_acc=a, train_adv_loss=1.0,
                           train_adv_acc=a / 2, test_clean_loss=1.0, test_clean_acc=a, test_adv_loss=1.0, test_adv_acc=a / 2,
                           seconds=1.0, samples_per_s=1.0) for e, a in enumerate(ACCURACIES, start=1)]
    (root / run_with_history).mkdir(parents=True)
    write_history(records, root / run_with_history / "history.parquet")
    out = tmp_path_factory.mktemp("site") / "site"
    build_site(rows, out, root)
    return out


def test_every_table_page_shows_the_markdown_leaderboards_lines_and_numbers(rows, site) -> None:
    markdown = render_markdown(rows)
    tables = leaderboard_lines(rows)
    assert len(tables) >= 2  # digits and fashion-mnist
    for key, lines in tables.items():
        html_rows = _table_cells(site / board_href(key))
        section = markdown.split(f"## {key.dataset}, {key.threat_model}, ")[1].split("\n## ")[0]
        md_rows = [[c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")]
                   for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| Model", "| ---"))]
        assert len(html_rows) == len(md_rows) == len(lines)
        for html_cells, md_cells in zip(html_rows, md_rows, strict=True):
            # The site adds Architecture, AdS and Attention columns after the model's name.
            assert [html_cells[0], *html_cells[4:]] == md_cells


def test_family_pages_draw_the_history_and_say_when_there_is_none(rows, site, run_with_history) -> None:
    first = rows[0]
    page = next(p for p in site.glob("family-*.html") if run_with_history in p.read_text())
    text = page.read_text()
    polylines = re.findall(r'<polyline points="([^"]+)"', text)
    assert len(polylines) == len(curves.SERIES)
    inner = curves.HEIGHT - curves.TOP - curves.BOTTOM
    test_clean = [float(point.split(",")[1]) for point in polylines[2].split()]  # SERIES[2]: test clean
    assert test_clean == pytest.approx([curves.TOP + inner * (1 - a) for a in ACCURACIES], abs=0.06)
    assert first.checkpoint_sha256 in text and "Robust overfitting" in text
    others = [p for p in site.glob("family-*.html") if p != page]
    assert others and all("No training history found for" in p.read_text() for p in others)


def test_the_site_is_self_contained(site) -> None:
    pages = list(site.glob("*.html"))
    assert len(pages) > 3 and (site / "index.html") in pages
    for page in pages:
        text = page.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), page.name
        for target in re.findall(r'(?:src|href)="([^"#]+)"', text):
            assert (site / target).is_file(), f"{page.name} links to missing {target}"


def test_publish_html_writes_the_site_and_the_markdown(tmp_path, capsys) -> None:
    results = tmp_path / "results.parquet"
    shutil.copy(RESULTS, results)
    assert main(["leaderboard", "publish", "--leaderboard", str(results), "--html", str(tmp_path / "site")]) == 0
    assert (tmp_path / "README.md").read_text() == render_markdown(read(results))
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "assets" / "site.js").is_file()
    assert main(["leaderboard", "publish", "--leaderboard", str(results), "--html", str(tmp_path / "x"), "--check"]) == 2
    assert "--check compares the markdown only" in capsys.readouterr().err


# -- in a real browser ---------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _column(driver, index: int) -> list[str]:
    """The text of column `index` in the visible rows, top to bottom, as the browser renders them."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#board tbody tr')).filter(r => !r.hidden)"
        ".map(r => r.cells[arguments[0]].innerText.trim())", index)


def _header(driver, label: str):
    from selenium.webdriver.common.by import By

    headers = driver.find_elements(By.CSS_SELECTOR, "#board thead th")
    index = next(i for i, h in enumerate(headers) if h.text.strip().rstrip(" ▲▼") == label)
    return index, headers[index]


def test_sorting_and_filtering_in_headless_chromium(browser, rows, site) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    key, lines = next((k, v) for k, v in leaderboard_lines(rows).items() if k.dataset == "digits")
    browser.get((site / board_href(key)).as_uri())
    arch, arch_header = _header(browser, "Architecture")
    initial = _column(browser, arch)
    assert initial == [line.family.arch for line in lines]  # ranking order, as built
    assert initial != sorted(initial)  # else sorting could do nothing and pass
    arch_header.click()
    assert _column(browser, arch) == sorted(initial)
    arch_header.click()
    assert _column(browser, arch) == sorted(initial, reverse=True)

    pgd, pgd_header = _header(browser, "Best PGD-10")
    pgd_header.click()
    shown = [float(text.split()[0].rstrip("†")) for text in _column(browser, pgd) if text != "-"]
    assert shown == sorted(shown, reverse=True) and len(set(shown)) > 1
    assert pgd_header.get_attribute("aria-sort") == "descending" and arch_header.get_attribute("aria-sort") == "none"

    Select(browser.find_element(By.ID, "arch-filter")).select_by_value("s4")
    expected = sum(line.family.arch == "s4" for line in lines)
    visible = _column(browser, arch)
    assert visible == ["s4"] * expected and 0 < expected < len(lines)
    assert browser.find_element(By.ID, "shown").text == f"{expected} of {len(lines)} models"
    links = browser.find_elements(By.CSS_SELECTOR, "#board tbody tr:not([hidden]) td a")
    assert {link.get_attribute("href").rsplit("/", 1)[1] for link in links} <= {family_href(line.family) for line in lines}

    Select(browser.find_element(By.ID, "arch-filter")).select_by_value("")
    text_filter = browser.find_element(By.ID, "text-filter")
    text_filter.send_keys("tanh")
    labels = _column(browser, 0)
    assert labels and all("tanh" in label for label in labels)
    assert len(labels) == sum(line.family.ads == "tanh" for line in lines)
