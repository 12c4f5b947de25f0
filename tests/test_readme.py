"""The README and the docs pages: every command shown runs, every page is linked and every link
resolves, and each Chinese page shows exactly the commands of its English twin.

Commands are taken from the ```bash blocks in order and run in a copy of a scratch project in
which `make demo` has already run (prepared once per test session); each page gets its own copy.
A block right after a line `<!-- not run by the tests: reason -->` is skipped, and so are `make
demo` (the preparation ran it) and `make test` / `make test-all` (they run this very test).
Commands on MVTec AD run on a synthetic category put at Dataset/MVTec/bottle, the README's own
images recipe on one at my_images/parts, and training with configs/config.yaml gets a random
expert and a single epoch appended as `-o` overrides, so that they finish in seconds.
"""
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from utils.demo_data import make_demo_category

SKIP_MARK = "<!-- not run by the tests"
PREPARED = ("make demo", "make test", "make test-all")  # run by the preparation, or running this
FAST_PAPER_RUN = ["-o", "num_epochs=0", "-o", "batch_size=8", "-o", "mvtec_img_size=64",
                  "-o", "eval_batch_size=8"]
# synthetic categories standing in for data the commands expect: MVTec AD and your own images
STAND_INS = (("Dataset/MVTec", "bottle"), ("my_images", "parts"))


def english_pages() -> list:
    """README.md and every English page of docs/, as paths relative to the project."""
    pages = sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs",
                                                                                   "*.md")))
    return ["README.md"] + [page for page in pages if not page.endswith("_cn.md")]


def chinese_twin(page: str) -> str:
    return page[:-len(".md")] + "_cn.md"


def read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as stream:
        return stream.read()


def bash_blocks(page: str) -> list:
    """(skipped, commands) of every ```bash block, continuation lines joined."""
    blocks = []
    for match in re.finditer(r"(?P<before>[^\n]*)\n```bash\n(?P<body>.*?)```", read(page), re.S):
        body = match.group("body").replace("\\\n", " ")
        commands = [line.strip() for line in body.splitlines()
                    if line.strip() and not line.strip().startswith("#")]
        blocks.append((match.group("before").startswith(SKIP_MARK), commands))
    return blocks


def page_commands(page: str) -> list:
    """The commands the tests run, in the page's order."""
    return [command for skipped, commands in bash_blocks(page) if not skipped
            for command in commands if command not in PREPARED]


def console_blocks(page: str) -> list:
    return re.findall(r"```console\n(.*?)```", read(page), re.S)


def scratch_project(work) -> str:
    """The project's files (tracked, or new and not ignored), with `.venv/bin/python` running
    this interpreter."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        source = os.path.join(ROOT, name)
        if os.path.isfile(source) and not os.path.islink(source):
            os.makedirs(work / os.path.dirname(name), exist_ok=True)
            shutil.copy2(source, work / name)
    (work / ".venv" / "bin").mkdir(parents=True)
    wrapper = work / ".venv" / "bin" / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    (work / ".venv" / ".installed").touch()  # newer than the requirements: make skips pip
    return str(work)


def command_env() -> dict:
    return {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory) -> str:
    """A scratch project after `make demo`, with the synthetic stand-in categories."""
    work = scratch_project(tmp_path_factory.mktemp("demo_project") / "project")
    result = subprocess.run(["make", "demo"], cwd=work, env=command_env(), capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, f"make demo failed:\n{result.stdout[-2000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    for root, category in STAND_INS:
        make_demo_category(os.path.join(work, root), category, size=64, num_train=8,
                           num_test_good=3, num_per_defect=3)
    return work


def adapt(command: str, expert_file: str) -> list:
    """argv for `command`; runs on the paper's config get the fast overrides appended."""
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    if "configs/config.yaml" in argv and any(a.endswith("train.py") for a in argv):
        argv += FAST_PAPER_RUN + ["-o", f"vgg_weights={expert_file}"]
    return argv


@pytest.mark.slow
@pytest.mark.parametrize("page", english_pages())
def test_page_commands_run(page, demo_project, expert_file, tmp_path):
    work = str(tmp_path / "project")
    shutil.copytree(demo_project, work, symlinks=True)
    for command in page_commands(page):
        result = subprocess.run(adapt(command, expert_file), cwd=work, env=command_env(),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{page}: `{command}` failed:\n" \
                                       f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def test_the_readme_shows_make_demo_first_and_both_test_tiers():
    lines = read("README.md").splitlines()
    assert "```bash\nmake demo\n```" in "\n".join(lines[:40])  # on the first screen
    assert "make test" in [command for _, block in bash_blocks("README.md") for command in block]
    assert "`make test-all`" in read("README.md")
    assert len(lines) <= 250


@pytest.mark.parametrize("page", english_pages())
def test_chinese_twin_shows_the_same_commands(page):
    twin = chinese_twin(page)
    assert os.path.isfile(os.path.join(ROOT, twin)), f"{page} has no Chinese twin {twin}"
    assert bash_blocks(twin) == bash_blocks(page)
    assert console_blocks(twin) == console_blocks(page)


def test_every_chinese_page_has_an_english_twin():
    chinese = glob.glob(os.path.join(ROOT, "docs", "*_cn.md"))
    english = {os.path.join(ROOT, chinese_twin(page)) for page in english_pages()}
    assert set(chinese) <= english


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


def relative_links(page: str) -> list:
    """The targets of the page's links and images that are not URLs, outside code blocks."""
    text = re.sub(r"```.*?```", "", read(page), flags=re.S)
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def anchors(page: str) -> set:
    """GitHub's anchors of the page's headings."""
    text = re.sub(r"```.*?```", "", read(page), flags=re.S)
    headings = re.findall(r"^#+ (.*)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def all_pages() -> list:
    return [page for english in english_pages() for page in (english, chinese_twin(english))]


@pytest.mark.parametrize("page", all_pages())
def test_relative_links_resolve(page):
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        assert os.path.exists(os.path.join(ROOT, resolved)), f"{page}: {target} does not exist"
        if anchor and resolved.endswith(".md"):
            assert anchor in anchors(resolved), f"{page}: {target}: no such heading"


def test_every_docs_page_is_linked_from_the_readme():
    for readme, pages in (("README.md", english_pages()[1:]),
                          ("README_cn.md", [chinese_twin(p) for p in english_pages()[1:]])):
        linked = {os.path.normpath(target.partition("#")[0])
                  for target in relative_links(readme)}
        missing = [page for page in pages if page not in linked]
        assert not missing, f"{readme} does not link {missing}"
