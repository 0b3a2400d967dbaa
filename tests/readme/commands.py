"""Shell commands shown in README.md and in the examples' docstrings, run as subprocesses.

Each command runs as written, shortened in the ways listed here and nowhere else:

- `BIGTRAIN_DATA_FRACTION=0.1` in the environment: the built-in datasets keep a tenth of each
  split (10,972 -> 1,098 training verses: 35 batches of 32, the last one uneven);
- flags appended to an example's command line (SHORTER; argparse keeps the last value);
- `train.py` (the user's script in the README) is tests/readme/train.py;
- two-host commands (`--nnodes 2`) run as both hosts on this one, over loopback: a free port
  on 127.0.0.1 for the rendezvous endpoint, `lo` for GLOO_SOCKET_IFNAME, one process per node.
  A block that shows one host's command (`--node-rank 0`, or c10d's "same on every host")
  runs it once per node rank.

`make demo` runs its recipe's command (read with `make -n`) without the venv bootstrap;
`make test` is this suite itself, so only its recipe is checked (running it would recurse).

Every run must exit with 0 and print the line EXPECT names for its script, with a figure that
passes the check beside it (accuracy above chance, perplexity below a uniform model's...).
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = Path(__file__).with_name("train.py")
LIMIT_S = 420  # one command (all its hosts); 220 s seen on a 2-core machine at load 20

QUICK_ENV = {"BIGTRAIN_DATA_FRACTION": "0.1"}
SHORTER = {  # script -> flags appended to its command line
    # 40 windows = a batch of 32 and an uneven last one of 8 (2 per pipeline micro-batch)
    "gpt_kjv.py": ["--windows", "40", "--epochs", "1"],
    "ctr_parameter_server.py": ["--ids", "2000", "--samples", "4000", "--batch-size", "256",
                                "--log-every", "5"],
    "mnist_convnet.py": ["--epochs", "1"],
    "text_lstm.py": ["--epochs", "1"],
}
CHANCE = 0.18  # the largest book's share of the verses (Psalms): always guessing it
EXPECT = {  # script -> (pattern of the line its main process prints, check of the figure)
    "seed_example.py": (r"test accuracy (\d\.\d+)", lambda v: v > CHANCE + 0.1),
    "train.py": (r"test accuracy (\d\.\d+)", lambda v: v > CHANCE + 0.1),
    "gpt_kjv.py": (r"perplexity (\d+\.\d)", lambda v: v < 256),  # a uniform byte model: 256
    "ctr_parameter_server.py": (r"test AUC (\d\.\d+)", lambda v: v > 0.55),
    # one epoch on a tenth of the data: the command runs and reports; that these models
    # learn is asserted by tests/examples (longer runs)
    "mnist_convnet.py": (r"convnet (\d\.\d+)", lambda v: 0.0 <= v <= 1.0),
    "text_lstm.py": (r"LSTM (\d\.\d+)", lambda v: 0.0 <= v <= 1.0),
}
PROGRAMS = {  # the installed commands, from this interpreter (the same entry points)
    "python": [sys.executable],
    "bigtrain": [sys.executable, "-m", "bigtrain.cli.main"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run"],
}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_done: dict[tuple, str] = {}  # argv+env -> output: a command shown twice runs once


def split_block(source: str) -> list[list[str]]:
    """A bash block's commands as argv lists (line continuations joined, comments dropped)."""
    joined = source.replace("\\\n", " ")
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def _without_flag(argv: list[str], name: str) -> tuple[str, ...]:
    i = argv.index(name) if name in argv[:-1] else len(argv)
    return tuple(argv[:i] + argv[i + 2:])


def _set_flag(argv: list[str], name: str, value: str) -> list[str]:
    out = list(argv)
    if name in out[:-1]:
        out[out.index(name) + 1] = value
    return out


def _script(argv: list[str]) -> str | None:
    return next((Path(a).name for a in argv if a.endswith(".py")), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve(command: list[str]) -> tuple[dict, list[str]]:
    """(extra environment, argv to run) for one command as the README shows it."""
    env = dict(QUICK_ENV)
    while command and _ASSIGNMENT.match(command[0]):
        key, value = command[0].split("=", 1)
        env[key] = value
        command = command[1:]
    if command[0] not in PROGRAMS:
        raise AssertionError(f"no rule to run {command[0]!r} (known: {sorted(PROGRAMS)})")
    argv = [str(TRAIN_PY) if a == "train.py" else a for a in command[1:]]
    shorter = SHORTER.get(_script(argv) or "", [])
    for name in shorter[::2]:  # the shortening replaces a flag the command already sets
        argv = list(_without_flag(argv, name))
    return env, PROGRAMS[command[0]] + argv + shorter


def host_runs(env: dict, argv: list[str]) -> list[tuple[dict, list[str]]]:
    """A `--nnodes N` command as N runs on this host (see the module docstring)."""
    nodes = int(_flag(argv, "--nnodes") or "1")
    if nodes == 1:
        return [(env, argv)]
    env = {**env, "GLOO_SOCKET_IFNAME": "lo"}
    argv = _set_flag(argv, "--rdzv-endpoint", f"127.0.0.1:{_free_port()}")
    argv = _set_flag(argv, "--nproc-per-node", "1")  # N nodes x 1 rank fit 2 cores
    return [(env, _set_flag(argv, "--node-rank", str(r))) for r in range(nodes)]


def run_together(runs: list[tuple[dict, list[str]]]) -> list[str]:
    """Start every run at once (the hosts of one job), wait for all; their outputs."""
    key = tuple((tuple(sorted(e.items())), tuple(a)) for e, a in runs)
    if key in _done:
        return [_done[key]]
    procs = [subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env, "PYTHONPATH": _path()},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for env, argv in runs]
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=LIMIT_S)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out = proc.communicate()[0] + f"\n[killed after {LIMIT_S} s]"
        outputs.append(out)
    for proc, out, (_, argv) in zip(procs, outputs, runs):
        assert proc.returncode == 0, f"`{shlex.join(argv)}` exited with {proc.returncode}:\n" \
                                     f"{out[-4000:]}"
    _done[key] = "\n".join(outputs)
    return [_done[key]]


def _path() -> str:
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def check_output(script: str, output: str) -> None:
    pattern, good = EXPECT[script]
    found = re.findall(pattern, output)
    assert found, f"{script}: no line matching {pattern!r} in its output:\n{output[-3000:]}"
    assert all(good(float(v)) for v in found), f"{script}: {pattern!r} gave {found}"


def make_recipe(target: str) -> list[str]:
    """The command `make TARGET` ends with (dry run: nothing is executed)."""
    out = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), target], capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()
    return shlex.split(out[-1])


def run_make(argv: list[str]) -> None:
    target = argv[1]
    recipe = make_recipe(target)
    if target == "test":  # this suite: check the recipe, do not recurse into it
        assert recipe[1:4] == ["-m", "pytest", "-q"], recipe
        return
    assert recipe[0].endswith("/python"), recipe
    command = ["python", *recipe[1:]]
    env, argv = resolve(command)
    for output in run_together([(env, argv)]):
        check_output(_script(argv), output)


def run_documented(command: str) -> str:
    """The output of one documented command line, run as its README or docstring test runs
    it (shortened, all hosts). A test that checks more of that output shares the run: a
    command runs once per session, whichever test comes first.

    Example:
        out = run_documented("python examples/gpt_kjv.py --strategy tensor --devices 2")
    """
    [argv] = split_block(command)
    env, argv = resolve(argv)
    return run_together(host_runs(env, argv))[0]


def run_block(source: str) -> None:
    """Run every command of a bash block; the `--nnodes` ones as all their hosts at once."""
    jobs: dict[tuple, list] = {}
    for command in split_block(source):
        if command[0] == "make":
            run_make(command)
            continue
        env, argv = resolve(command)
        same_job = _without_flag(argv, "--node-rank")  # host A's and host B's commands
        jobs.setdefault(same_job, host_runs(env, argv))
    for runs in jobs.values():
        for output in run_together(runs):
            check_output(_script(runs[0][1]), output)
