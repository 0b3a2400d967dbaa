"""`bigtrain verify SCRIPT`: does each strategy train exactly like one process?

    bigtrain verify train.py --strategies ddp,zero3 --steps 5 --devices 2 --tolerance 1e-5
    bigtrain verify train.py --script-args "--epochs 3"     # arguments for the script

The script runs until its first `model.fit(...)`, which is stopped before training (see
bigtrain.api.capture); its model, data and settings are then trained for K steps (shuffle
off, the script's seed, global batch and accumulation) in this process and with every
strategy on N ranks, and a parity table is printed. Parameters must agree within
--tolerance; the mean loss within --tolerance x (1 + |loss|), as a float32 loss is only
known relative to its magnitude. The exit status is 1 when any strategy
failed or errored, or when every strategy refused the model, batch or devices (nothing
was checked), 0 otherwise. Nothing is trained, and the exit status is 1, when a
strategy name is not registered (the closest valid name is suggested) or when the K steps
move the parameters too little for the tolerance to tell a broken strategy apart.
"""
from __future__ import annotations

import dataclasses
import os
import runpy
import shlex
import sys

DEFAULT_STRATEGIES = "ddp,zero1,zero2,zero3"


def capture_script(script: str, script_args: list[str], command: str = "bigtrain verify"):
    """Run `script` as __main__ up to its first fit; the FitCaptured it raised. `command`
    names the CLI command in the errors."""
    from bigtrain.api.capture import FitCaptured, capture_fit
    if not os.path.isfile(script):
        raise SystemExit(f"{command}: no such script: {script}")
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        with capture_fit():
            runpy.run_path(script, run_name="__main__")
    except FitCaptured as fit:
        return fit
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    raise SystemExit(f"{command}: {script} finished without calling model.fit(...); "
                     f"{command.split()[-1]} needs a script that trains a compiled bigtrain "
                     "Model with fit")


def task_factory(fit, steps: int):
    """A function that builds a fresh K-step task from the captured fit, always from the
    script's initial weights (the single-process run trains the model in place)."""
    from bigtrain.api.training import make_task
    from bigtrain.launch.verify import first_samples
    model = fit.model
    initial = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    config = dataclasses.replace(fit.config, epochs=1, initial_epoch=0, shuffle=False,
                                 verbose=0)
    data = first_samples(fit.data, steps * config.batch_size)

    def make():
        model.net.load_state_dict(initial)
        return make_task(model, data, None, config, [])
    return make


def run_verify(args) -> int:
    from bigtrain.launch.verify import (PASS, BlindCheck, all_passed, check_names,
                                        render_rows, verify_parity)
    if args.steps < 1 or args.devices < 2 or args.tolerance <= 0:
        raise SystemExit("bigtrain verify: need --steps >= 1, --devices >= 2, --tolerance > 0")
    fit = capture_script(args.script, args.script_args)
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    try:
        check_names(names)  # after the script ran: it may register strategies of its own
    except ValueError as e:
        raise SystemExit(f"bigtrain verify: {e}") from None
    make = task_factory(fit, args.steps)
    cfg = make().config
    steps = -(-min(len(fit.data), args.steps * cfg.batch_size) // cfg.batch_size)
    print(f"bigtrain verify: {steps} steps of global batch {cfg.batch_size} "
          f"(accumulate {cfg.accumulate_steps}, precision {cfg.precision}, seed {cfg.seed}) "
          f"on {args.devices} devices vs one process", flush=True)
    try:
        rows, _ = verify_parity(make, fit.model, names, args.devices, args.tolerance)
    except BlindCheck as e:  # nothing a strategy does could fail this check
        raise SystemExit(f"bigtrain verify: {e}") from None
    print(render_rows(rows, args.tolerance))
    if not any(r.status == PASS for r in rows):  # every strategy refused: nothing was checked
        print("bigtrain verify: no strategy could be checked (see the reasons above); change "
              "--devices or --strategies", file=sys.stderr, flush=True)
        return 1
    return 0 if all_passed(rows) else 1


def add_parser(sub) -> None:
    v = sub.add_parser("verify", help="check that strategies train like one process (parity "
                                      "table; exit 1 on any failure)")
    v.add_argument("script", help="a training script that calls model.fit(...)")
    v.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                   help=f"comma-separated strategy names (default {DEFAULT_STRATEGIES})")
    v.add_argument("--steps", type=int, default=5, help="optimizer steps to compare")
    v.add_argument("--devices", type=int, default=2, help="processes per strategy")
    v.add_argument("--tolerance", type=float, default=1e-5,
                   help="max |difference| of every parameter; the mean loss may differ "
                        "by TOLERANCE x (1 + |loss|), relative to its magnitude (default 1e-5)")
    v.add_argument("--script-args", default="", type=shlex.split,
                   help='arguments for the script, one string (e.g. "--data small")')

