"""`bigtrain run`'s arguments split where torchrun's flags end and the script's own begin.

torchrun parses its whole command line with one argparse parser, abbreviations allowed, so a
script's own flag such as `--nproc 3` (`bigtrain run train.py --nproc 3`) failed as "ambiguous
option: --nproc could match --nproc-per-node" before any rank started. Here torch's parser sees
only the flags before the script; the script's arguments pass through untouched.
"""
from __future__ import annotations

import os
import signal
import sys


def torchrun_parser():
    """torch.distributed.run's parser, named as the user typed it."""
    from torch.distributed.run import get_args_parser
    parser = get_args_parser()
    parser.prog = "bigtrain run"
    return parser


def _action(parser, arg: str):
    """The parser's action for flag `arg` (NAME or NAME=VALUE; a unique prefix as argparse
    allows), or None when it names none."""
    name = arg.split("=", 1)[0]
    actions = parser._option_string_actions
    if name in actions:
        return actions[name]
    found = {id(a): a for flag, a in actions.items() if flag.startswith(name)}
    return next(iter(found.values())) if len(found) == 1 else None


def script_at(argv: list[str], parser=None) -> int:
    """Index of the training script (or module, or program) in `bigtrain run`'s arguments:
    the first argument that is no torchrun flag nor a flag's value (len(argv) when none)."""
    parser = parser or torchrun_parser()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return i + 1
        if not arg.startswith("-") or arg == "-":
            return i
        action = _action(parser, arg)
        if action is None:  # exits 2, with the usage
            parser.error(f"unrecognized argument: {arg} (torchrun's flags go before the script, "
                         "the script's own after it)")
        takes_value = action is not None and action.nargs != 0 and "=" not in arg
        i += 2 if takes_value else 1
    return len(argv)


def launcher_flags(argv: list[str]) -> list[str]:
    """torchrun's flags of `argv`, without the script and its arguments."""
    return argv[:script_at(argv)]


def check_script(argv: list[str]) -> None:
    """Fail before any rank starts when the script file does not exist or does not compile
    (each rank would otherwise fail on its own, under a page of torch's failure report)."""
    at = script_at(argv)
    flags = argv[:at]
    if at >= len(argv):
        raise SystemExit("bigtrain run: no training script given; usage: bigtrain run "
                         "[--nproc-per-node N] SCRIPT.py [ARGS] (see bigtrain run --help)")
    if any(f in ("-m", "--module", "--no-python", "--no_python") for f in flags):
        return  # a module name or a program on PATH, not a file
    script = argv[at]
    if not os.path.isfile(script):
        raise SystemExit(f"bigtrain run: no such script: {script} (from {os.getcwd()})")
    if script.endswith(".py"):
        with open(script, "rb") as f:
            source = f.read()
        try:
            compile(source, script, "exec")
        except SyntaxError as e:  # every rank would fail on it, each with its own report
            raise SystemExit(f"bigtrain run: {script} does not compile, line {e.lineno}: "
                             f"{e.msg}\n  {(e.text or '').strip()}") from None


def torchrun(argv: list[str]) -> None:
    """torch.distributed.run on `argv`, its parser given only the flags before the script."""
    from torch.distributed.elastic.multiprocessing.errors import record
    from torch.distributed.run import run
    parser = torchrun_parser()
    at = script_at(argv, parser)
    args = parser.parse_args(argv[:at + 1])
    args.training_script_args = argv[at + 1:]
    record(run)(args)


def exit_code_of(error: BaseException) -> int:
    """The exit code of `bigtrain run` after torch's launcher raised `error`: a rank's failure
    reported as torch formats it (exit 1), a signal to the launcher as a shell reports a
    process it killed (128 + the signal: 130 for Ctrl-C). None of them needs a traceback."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    if isinstance(error, SignalException):
        name = signal.Signals(error.sigval).name
        print(f"bigtrain run: stopped by {name}; every rank was stopped", file=sys.stderr,
              flush=True)
        return 128 + int(error.sigval)
    print(str(error), file=sys.stderr, flush=True)  # torch's failure table: which rank, why
    return 1
