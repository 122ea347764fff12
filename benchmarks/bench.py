"""Measure the goals of issue 5 and print them as a markdown table, measurement beside goal.

Run from the repo root: `python benchmarks/bench.py [--quick] [--large]`. Every run happens in a
temporary copy of the project (the files git would see, in a fresh git repo), so the repo tree is
never written. Parts:

- small: `dvc repro -f` against the same five stages run in one Python process (goal ≤ 2x), and a
  no-op `dvc repro` against `dvc status` in an empty DVC repo (goal ≤ 1.5x);
- imports: `python -c "import X"` for the heavy libraries, `python -m stages.<stage> --help`;
- epoch: seconds per epoch of both trainers' `fit` at n = 1e7 against one `torch.dot(x, y)`
  memory pass (goal ≤ 10x), with one thread (as the stages pin it) and with the default count;
- large (only with --large or --only large): the pipeline at data.n_samples = 1e8, each stage's
  command from dvc.yaml run under GNU time for its peak RSS (goal ≤ 2 GiB) and wall time, then
  `dvc commit` for what DVC adds (hashing and caching the outputs).
"""

import argparse
import gc
import importlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("small", "imports", "epoch", "large")
IMPORTS = ("numpy", "typer", "pyarrow.parquet", "pandas", "matplotlib.figure", "torch")
GIB = 1 << 30

# The venv's python and dvc first on PATH (DVC runs each stage's `python -m ...` through the
# shell), no analytics, and a git identity of our own for the copy's commit.
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


def log(message: str) -> None:
    # The load average shows when something else was running on the machine meanwhile.
    stamp = f"{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}"
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def sh(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess:
    """Run a command quietly; fail with its output if it exits non-zero."""
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(
            f"{' '.join(map(str, args))} exited {result.returncode} in {cwd}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def timed(args: list[str | Path], cwd: Path) -> float:
    start = time.perf_counter()
    sh(args, cwd)
    return time.perf_counter() - start


def median_time(args: list[str | Path], cwd: Path, reps: int) -> float:
    return statistics.median(timed(args, cwd) for _ in range(reps))


def copy_project(destination: Path) -> Path:
    """Copy the files git would see (tracked, or new and not ignored) into a fresh git repo."""
    listed = sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is not copied
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    sh(["git", "init", "-q", "-b", "main"], destination)
    sh(["git", "add", "-A"], destination)
    sh(["git", "commit", "-q", "-m", "project"], destination)
    return destination


def stage_commands(project: Path) -> dict[str, list[str]]:
    """Each stage's cmd from dvc.yaml, split into argv, in the file's (the pipeline's) order."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    commands = {name: shlex.split(stage["cmd"]) for name, stage in stages.items()}
    for name, argv in commands.items():
        if argv[:2] != ["python", "-m"]:
            sys.exit(f"dvc.yaml: stage {name}'s cmd is not `python -m stages.<stage> ...`: {argv}")
    return commands


def drive(project: Path, freeze: bool) -> None:
    """The whole pipeline in this one process: every stage's typer command with dvc.yaml's args.

    Prints the seconds spent importing the stage modules and running each stage, as JSON. With
    `freeze`, the process ends as each stage's own does (stages.cli.run): gc.freeze() first, so
    that the exit skips the cycle collector's last walk over every live object.
    """
    os.chdir(project)
    sys.path.insert(0, str(project))
    start = time.perf_counter()
    import typer

    commands = stage_commands(project)
    modules = {name: importlib.import_module(argv[2]) for name, argv in commands.items()}
    imported = time.perf_counter()
    stages = {}
    for name, argv in commands.items():
        stage_start = time.perf_counter()
        # The typer app parses the same arguments as `python -m` would and calls main().
        typer.main.get_command(modules[name].app).main(argv[3:], standalone_mode=False)
        stages[name] = time.perf_counter() - stage_start
    print(json.dumps({"imports": imported - start, "work": sum(stages.values()), "stages": stages}))
    if freeze:
        gc.freeze()


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, value: str, goal: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None else ("yes" if met else "**no**")
        self.rows.append((what, value, goal, verdict))
        log(f"{what}: {value} {goal} {verdict}")

    def markdown(self) -> str:
        lines = ["| measurement | value | goal | met |", "| --- | --- | --- | --- |"]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return "\n".join(lines)


def ms(seconds: float) -> str:
    if seconds < 0.1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def bench_small(table: Table, work: Path, reps: int) -> None:
    project = copy_project(work / "small")
    log("small: warm-up dvc repro")
    sh(["dvc", "repro"], project)
    commands = stage_commands(project)
    repro, in_process, frozen, inside = [], [], [], []
    by_hand = {name: [] for name in commands}
    drive_command = [sys.executable, Path(__file__).resolve(), "--drive", project]
    for rep in range(reps):  # interleaved, so that drift of the machine hits all alike
        log(f"small: repetition {rep + 1}/{reps}")
        repro.append(timed(["dvc", "repro", "-f"], project))
        start = time.perf_counter()
        result = sh(drive_command, project)
        in_process.append(time.perf_counter() - start)
        inside.append(json.loads(result.stdout.splitlines()[-1]))
        frozen.append(timed([*drive_command, "--freeze"], project))
        for name, argv in commands.items():
            by_hand[name].append(timed(argv, project))
    a, b = statistics.median(repro), statistics.median(in_process)
    table.add("(a) `dvc repro -f`, default params", ms(a))
    table.add(
        "(b) same five stages in one python process (wall, incl. start-up and imports)",
        ms(b),
        "(a) ≤ 2 x (b)",
        a <= 2 * b,
    )
    table.add("(a) / (b)", f"{a / b:.2f}x", "≤ 2x", a <= 2 * b)
    b_frozen = statistics.median(frozen)
    table.add(
        "(b') as (b), but ending with gc.freeze() as each stage does",
        f"{ms(b_frozen)}: (a) / (b') = {a / b_frozen:.2f}x",
    )
    table.add(
        "(b) of which imports / stage work",
        f"{ms(statistics.median(i['imports'] for i in inside))} / "
        f"{ms(statistics.median(i['work'] for i in inside))}",
    )
    table.add(
        "(b) stage work in-process (first call, so lazy imports included)",
        ", ".join(
            f"{name} {ms(statistics.median(i['stages'][name] for i in inside))}"
            for name in commands
        ),
    )
    hand = {name: statistics.median(times) for name, times in by_hand.items()}
    for name, seconds in hand.items():
        table.add(f"stage command by hand: {name}", ms(seconds))
    table.add("sum of the five stage commands by hand", ms(sum(hand.values())))
    table.add("dvc's own share of (a): (a) - sum by hand", ms(a - sum(hand.values())))

    log("small: no-op dvc repro and dvc status")
    sh(["dvc", "repro"], project)  # outputs were rewritten: let dvc hash them once
    noop = median_time(["dvc", "repro"], project, reps)
    empty = work / "empty"
    empty.mkdir()
    sh(["git", "init", "-q", "-b", "main"], empty)
    sh(["dvc", "init", "-q"], empty)
    sh(["dvc", "status"], empty)
    status = median_time(["dvc", "status"], empty, reps)
    table.add("(c) no-op `dvc repro` (all up to date)", ms(noop))
    table.add(
        "(d) `dvc status` in an empty DVC repo", ms(status), "(c) ≤ 1.5 x (d)", noop <= 1.5 * status
    )
    table.add("(c) / (d)", f"{noop / status:.2f}x", "≤ 1.5x", noop <= 1.5 * status)
    table.add(
        "`dvc status` in the project (all up to date)",
        ms(median_time(["dvc", "status"], project, reps)),
    )
    table.add("`dvc --version`", ms(median_time(["dvc", "--version"], project, reps)))


def bench_imports(table: Table, work: Path, reps: int) -> None:
    project = copy_project(work / "imports")
    python = sys.executable
    base = median_time([python, "-c", "pass"], project, reps)
    table.add("`python -c pass` (interpreter start-up)", ms(base))
    for module in IMPORTS:
        try:
            seconds = median_time([python, "-c", f"import {module}"], project, reps)
        except SystemExit:
            table.add(f"`import {module}`", "not installed")
            continue
        table.add(f"`import {module}` (minus start-up)", ms(seconds - base))
    for argv in stage_commands(project).values():
        seconds = median_time([python, "-m", argv[2], "--help"], project, reps)
        table.add(f"`python -m {argv[2]} --help`", ms(seconds))


def bench_epoch(
    table: Table, work: Path, n: int, epochs: int, reps: int, chunk_log2: list[int]
) -> None:
    project = copy_project(work / "epoch")
    sys.path.insert(0, str(project))
    import torch

    from stages import model, train_manual, train_module, training

    def module_fit_through_linear(*args):
        """train_module's fit with the forward LinearRegression avoids: nn.Linear's matmul."""
        own_forward = model.LinearRegression.forward
        model.LinearRegression.forward = lambda self, x: self.linear(x.unsqueeze(1)).squeeze(1)
        try:
            return train_module.fit(*args)
        finally:
            model.LinearRegression.forward = own_forward

    chosen = training.CHUNK_ROWS
    table.add("stages.training.CHUNK_ROWS (rows per chunk of an epoch)", str(chosen))
    default_threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=generator)
    y = 3 * x + 0.5 + torch.randn(n, generator=generator)
    fits = {"train_module": train_module.fit, "train_manual": train_manual.fit}
    for fit in fits.values():
        fit(x, y, 0.0, 0.0, 0.05, 1)  # warm-up
    for _ in range(3):
        torch.dot(x, y)

    def measure(
        threads: int, chunk_rows: int, rounds: int, fits: dict = fits
    ) -> tuple[list[float], dict]:
        torch.set_num_threads(threads)
        training.CHUNK_ROWS = chunk_rows
        dot, per_epoch = [], {name: [] for name in fits}
        # Rounds interleave the dots and both fits, so that a busy spell hits all alike.
        for _ in range(rounds):
            for _ in range(reps):
                start = time.perf_counter()
                torch.dot(x, y)
                dot.append(time.perf_counter() - start)
            for name, fit in fits.items():
                start = time.perf_counter()
                fit(x, y, 0.0, 0.0, 0.05, epochs)
                # fit makes epochs + 1 passes: the last only measures the trained model's loss.
                per_epoch[name].append((time.perf_counter() - start) / (epochs + 1))
        return dot, per_epoch

    for threads in (1, default_threads):
        dot, per_epoch = measure(threads, chosen, rounds=5)
        dot_time = statistics.median(dot)
        table.add(
            f"`torch.dot(x, y)`, n = {n:.0e}, {threads} thread(s)",
            f"{ms(dot_time)} (fastest {ms(min(dot))})",
        )
        for name, times in per_epoch.items():
            ratio = statistics.median(times) / dot_time
            table.add(
                f"{name} epoch, n = {n:.0e}, {threads} thread(s)",
                f"{ms(statistics.median(times))} = {ratio:.1f}x dot "
                f"(fastest {ms(min(times))} = {min(times) / min(dot):.1f}x fastest dot)",
                "≤ 10x dot",
                ratio <= 10,
            )
    dot, per_epoch = measure(1, chosen, 3, {"linear": module_fit_through_linear})
    seconds = statistics.median(per_epoch["linear"])
    table.add(
        f"train_module epoch if forward went through nn.Linear(x), n = {n:.0e}, 1 thread",
        f"{ms(seconds)} = {seconds / statistics.median(dot):.1f}x dot",
    )
    for k in chunk_log2:
        dot, per_epoch = measure(1, 1 << k, rounds=3)
        dot_time = statistics.median(dot)
        table.add(
            f"chunks of 2^{k} rows, n = {n:.0e}, 1 thread: module / manual epoch",
            " / ".join(
                f"{ms(statistics.median(t))} = {statistics.median(t) / dot_time:.1f}x dot"
                for t in per_epoch.values()
            ),
        )
    training.CHUNK_ROWS = chosen
    torch.set_num_threads(default_threads)


def bench_large(table: Table, work: Path, n: int) -> None:
    project = copy_project(work / "large")
    params_path = project / "params.yaml"
    text, count = re.subn(r"(?m)^(\s+n_samples:\s*)\d+", rf"\g<1>{n}", params_path.read_text())
    if count != 1:
        sys.exit("params.yaml: no single data.n_samples line to change")
    params_path.write_text(text)
    report = work / "time.txt"
    total = 0.0
    for name, argv in stage_commands(project).items():
        log(f"large: {name}")
        sh(["/usr/bin/time", "-f", "%M %e", "-o", report, *argv], project)
        peak_kib, seconds = report.read_text().split()[-2:]
        peak = int(peak_kib) * 1024
        total += float(seconds)
        table.add(
            f"{name} at n = {n:.0e}: peak RSS, wall",
            f"{peak / GIB:.2f} GiB, {float(seconds):.1f} s",
            "≤ 2 GiB",
            peak <= 2 * GIB,
        )
    table.add(f"all five stages at n = {n:.0e}, wall", f"{total:.1f} s")
    log("large: dvc commit")
    sh(["/usr/bin/time", "-f", "%M %e", "-o", report, "dvc", "commit", "-f"], project)
    peak_kib, seconds = report.read_text().split()[-2:]
    table.add(
        f"`dvc commit -f` at n = {n:.0e} (hash and cache outputs): peak RSS, wall",
        f"{int(peak_kib) / (1 << 20):.2f} GiB, {float(seconds):.1f} s",
    )
    table.add(f"no-op `dvc repro` at n = {n:.0e}", ms(median_time(["dvc", "repro"], project, 3)))
    sizes = sum(p.stat().st_size for p in (project / "data").glob("*.parquet"))
    table.add(f"data/*.parquet at n = {n:.0e}", f"{sizes / GIB:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the small runs and import costs, with fewer repetitions",
    )
    parser.add_argument("--large", action="store_true", help="also the large run (many minutes)")
    parser.add_argument(
        "--only", choices=PARTS, action="append", help="run only this part (repeatable)"
    )
    parser.add_argument("--reps", type=int, help="repetitions per timing (default 5, quick 3)")
    parser.add_argument("--epoch-n", type=float, default=1e7, help="rows for the epoch part")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per timed fit")
    parser.add_argument("--large-n", type=float, default=1e8, help="rows for the large run")
    parser.add_argument(
        "--chunk-log2",
        type=int,
        nargs="+",
        help="epoch part: also time these chunk sizes (2^k rows), e.g. --chunk-log2 15 16 17 19",
    )
    parser.add_argument("--drive", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--freeze", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive, args.freeze)
        return
    if args.only:
        parts = args.only
    elif args.quick:
        parts = ["small", "imports"]
    else:
        parts = ["small", "imports", "epoch", *(["large"] if args.large else [])]
    reps = args.reps or (3 if args.quick else 5)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        work = Path(work)
        if "small" in parts:
            bench_small(table, work, reps)
        if "imports" in parts:
            bench_imports(table, work, reps)
        if "epoch" in parts:
            bench_epoch(
                table, work, int(args.epoch_n), args.epochs, max(reps, 11), args.chunk_log2 or []
            )
        if "large" in parts:
            bench_large(table, work, int(args.large_n))
    print(table.markdown())


if __name__ == "__main__":
    main()
