"""environment.yml and pyproject.toml describe the same environment; notebooks ship clean."""
import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names the PyTorch package differently from PyPI
CONDA_NAME = {"torch": "pytorch"}


def _split(spec):
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted, listed = {}, []
    for spec in project["dependencies"]:
        name, version = _split(spec)
        wanted[CONDA_NAME.get(name, name)] = version.lstrip("=")
        listed.append(name)
    text = (ROOT / "environment.yml").read_text()
    conda, conda_listed = {}, []
    for line in text.split("\ndependencies:", 1)[1].splitlines():
        m = re.match(r"^  - ([A-Za-z0-9_.\-]+)(=([^\s#]+))?\s*$", line)
        if m and m.group(1) not in ("python", "pip"):
            conda[m.group(1).lower()] = m.group(3) or ""
            conda_listed.append(m.group(1).lower())
    assert conda == wanted, "environment.yml and pyproject.toml list different packages or pins"
    for names, where in ((listed, "pyproject.toml"), (conda_listed, "environment.yml")):
        assert len(names) == len(set(names)), f"{where} lists a package twice: {sorted(names)}"
    assert '-e ".[dev]"' in text, "environment.yml must install this package (with dev extras) through pip"


def test_torch_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_notebooks_committed_without_outputs():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in notebooks:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{path.name} carries outputs: strip them before committing"
                assert cell.get("execution_count") is None, f"{path.name} has execution counts"


def test_readme_quick_start_is_make_targets():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [l.split("#")[0].strip() for l in block.splitlines() if l.split("#")[0].strip()]
    assert commands[:2] == ["make demo", "make test"], commands


def test_every_package_is_listed_for_the_wheel():
    """setuptools installs only the packages pyproject names: a folder of modules left out of the
    list (e.g. msdetr_lite/viz) would be missing from an installed msdetr_lite."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "msdetr_lite").rglob("__init__.py")}
    assert found <= listed, f"pyproject.toml [tool.setuptools] packages lacks {sorted(found - listed)}"


def _anchors(markdown: str) -> set[str]:
    """The #fragments a markdown file's headings get (GitHub's rule: lower case, punctuation
    dropped, spaces to hyphens)."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", markdown, re.M)}


def _broken_links(path: Path) -> list[str]:
    """The relative links and image sources of a markdown file whose file or #section is missing."""
    text = path.read_text()
    broken = []
    for link, src in re.findall(r'\]\(([^)\s]+)\)|src="([^"]+)"', text):
        target = link or src
        if "://" in target or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        where = (path.parent / file) if file else path
        if not where.exists() or (anchor and anchor not in _anchors(where.read_text())):
            broken.append(target)
    return broken


def test_readme_is_a_front_door_and_results_are_linked():
    """The README answers what it is, how to run it and what you will see in at most 150 lines;
    everything measured lives in docs/results.md (the regime study in its own section), which
    the README links, and every file or section either page links exists."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150, "README.md is the front door: at most 150 lines"
    assert "](docs/results.md" in readme and "\n## Does mixed supervision win here?\n" in readme
    results = ROOT / "docs" / "results.md"
    assert "\n## Regime study\n" in results.read_text()
    for page in (ROOT / "README.md", results):
        assert not _broken_links(page), f"{page.name} links to missing files or sections: {_broken_links(page)}"
