"""`bigtrain plan`, `bigtrain report` and `bigtrain doctor`: know before you run, see after."""
from __future__ import annotations

import json
import os
import re

_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> float:
    """"80GB" -> 8e10; "16GiB" -> 17179869184."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise SystemExit(f"cannot read a memory size from {text!r}; use e.g. 80GB or 16GiB")
    return float(m.group(1)) * _UNITS[m.group(2).upper()]


def run_plan(args) -> int:
    from rich.console import Console
    from torch import nn

    from bigtrain.cli.target import load_object
    from bigtrain.launch.runner import model_refusals
    from bigtrain.parallel.tensor_plan import planned_styles
    from bigtrain.plan import plan
    obj = load_object(args.target)
    model = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
    module = getattr(model, "net", model)
    if not isinstance(module, nn.Module):
        raise SystemExit(f"{args.target} did not give a model (got {type(model).__name__})")
    if args.devices < 1 or args.batch_size < 1:
        raise SystemExit(f"bigtrain plan: --devices and --batch-size must be at least 1, got "
                         f"{args.devices} and {args.batch_size}")
    refused = model_refusals(module, args.devices)
    try:
        p = plan(module, devices=args.devices, batch_size=args.batch_size,
                 device_memory=parse_bytes(args.device_memory) if args.device_memory else None,
                 seq_len=args.seq_len, precision=args.precision, optimizer=args.optimizer,
                 device=plan_device(args.inventory, args.device_kind, args.devices),
                 refused=refused, tensor_styles=planned_styles(module, args.devices))
    except ValueError as e:  # the model or the settings: the planner says what to change
        raise SystemExit(f"bigtrain plan: {e}") from None
    Console(width=160).print(p.table())
    for note in p.notes:
        print(f"note: {note}")
    for name, why in refused.items():
        if name in p.skipped:
            print(f"cannot run: {name}: {why}")
    if args.devices > 1 and "tensor" not in refused:  # conv channels, heads, Linears split
        from bigtrain.parallel.tensor_plan import split_summary
        print(f"note: {split_summary(module, args.devices)}")
    best = p.best
    print(f"best: {best.strategy} - {best.reason}" if best else "nothing fits: see the table")
    return 0


def plan_device(inventory_path: str | None, kind: str | None, devices: int):
    """The planner's device from the CLI: per-rank specs from a saved inventory, a datasheet
    preset, or None (this CPU host)."""
    from bigtrain.parallel.inventory import load_inventory, rank_specs
    from bigtrain.plan import DeviceSpec
    if inventory_path:
        try:
            return rank_specs(load_inventory(inventory_path), devices,
                              kind if kind in ("cpu", "cuda") else None)
        except (OSError, ValueError) as e:
            raise SystemExit(f"bigtrain plan --inventory: {e}") from None
    if kind in (None, "cpu"):
        return None
    try:
        return DeviceSpec.preset(kind)
    except ValueError as e:
        raise SystemExit(f"bigtrain plan --device-kind: {e} (or 'cpu'; 'cuda' needs "
                         "--inventory FILE from `bigtrain inventory`)") from None


def run_inventory(args) -> int:
    from bigtrain.parallel.inventory import inventory, save_inventory
    devices = inventory()
    for d in devices:
        print(f"{d.type}{'' if d.index is None else ':' + str(d.index)}  {d.name}  "
              f"{d.flops / 1e12:.2f} TFLOP/s ({d.dtype})  {d.memory_bytes / 1e9:.1f} GB")
    if args.output:
        save_inventory(devices, args.output)
        print(f"wrote {args.output} (read by: bigtrain plan ... --inventory {args.output})")
    return 0


def _run_dir(path: str, command: str) -> str:
    """`path` when it holds a readable run.json; otherwise exit with one line saying why."""
    from bigtrain.diagnose import RunRecord
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "run.json")):
        raise SystemExit(f"{path} is not a bigtrain run directory (no run.json); pass the "
                         "run_dir given to fit(run_dir=...)")
    try:
        RunRecord.load(path)
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # corrupt or foreign JSON
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SystemExit(f"bigtrain {command}: {os.path.join(path, 'run.json')} is not a "
                         f"bigtrain run record ({why}); pass the run_dir given to "
                         "fit(run_dir=...)") from None
    return path


def run_report(args) -> int:
    from bigtrain.diagnose import render_report
    out = render_report(_run_dir(args.run_dir, "report"))
    print(f"wrote {out}")
    return 0


def run_doctor(args) -> int:
    from bigtrain.diagnose import RunRecord, check_run, render_doctor, sort_findings
    if args.run_dir.endswith(".py"):
        findings = _doctor_script_data(args.run_dir, lr_test=args.lr_test)
    else:
        record = RunRecord.load(_run_dir(args.run_dir, "doctor"))
        findings = check_run(record)
        if args.lr_test:
            findings.append(_lr_test_of_run(record))
    findings = sort_findings([f for f in findings if f is not None])
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        print(render_doctor(findings))
    return 0


def _lr_test_of_run(record):
    """The learning-rate range test on the script that trained `record`'s run (rerun up to
    its fit, from its initial weights); an info finding saying why when that cannot be."""
    from bigtrain.cli.verify import capture_script
    from bigtrain.diagnose import Finding
    script = record.script
    if script is None or not os.path.isfile(script):
        why = ("the run record names no training script (the fit did not run from a .py "
               "file)" if script is None else f"its training script {script} no longer exists")
        return Finding("lr_test_skipped", "info", f"no learning-rate test: {why}",
                       "run `bigtrain doctor SCRIPT.py --lr-test` on the script that trains it")
    return lr_test_finding(capture_script(script, list(record.script_args),
                                          command="bigtrain doctor"))


def _numpy(a):
    return a.numpy() if hasattr(a, "numpy") else a


LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def lr_test_finding(fit, steps: int = 30):
    """A short learning-rate range test on the captured fit: from the script's initial
    weights, `steps` optimizer steps at each rate of LR_GRID (and the compiled one) on the
    first samples; the loss on those samples afterwards decides. A short test favours rates
    that make fast early progress: read "too low" as "worth trying higher", not as proof."""
    from bigtrain.api.optimizers import OptimizerSpec
    from bigtrain.api.training import make_task
    from bigtrain.diagnose import lr_range_test
    from bigtrain.engine.data import ArrayData
    from bigtrain.engine.loop import evaluate, train
    from bigtrain.engine.task import FitConfig
    from bigtrain.parallel.base import Strategy
    model, spec = fit.model, fit.model.compiled.optimizer
    batch = fit.config.batch_size
    n = min(len(fit.data), steps * batch)
    subset = ArrayData([a[:n] for a in fit.data.xs], [a[:n] for a in fit.data.ys])
    initial = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    config = FitConfig(epochs=1, batch_size=batch, shuffle=False, verbose=0)

    def loss_after(lr: float) -> float:
        model.net.load_state_dict(initial)
        task = make_task(model, subset, None, config, [])
        if lr > 0:
            task.make_optimizer = OptimizerSpec(spec.cls, {**spec.kwargs, "lr": lr}).build
            train(task, Strategy(), model)
        return evaluate(task, Strategy(), model.net, subset, batch)["loss"]
    try:
        return lr_range_test(loss_after, LR_GRID, current_lr=spec.learning_rate or None)
    finally:
        model.net.load_state_dict(initial)


def _doctor_script_data(script: str, lr_test: bool = False) -> list:
    """Run SCRIPT up to its first fit and check the data it would train on (no training);
    with `lr_test`, also a short learning-rate range test."""
    from bigtrain.cli.verify import capture_script
    from bigtrain.diagnose import Finding, check_data
    try:
        fit = capture_script(script, [], command="bigtrain doctor")
    except ValueError as e:  # the script's fit refused its data before it would start
        nan = "NaN/Inf" in str(e)
        return [Finding("nan_values" if nan else "fit_refused", "error", str(e),
                        "replace or drop the non-finite values before fit, e.g. keep = "
                        "np.isfinite(x).all(axis=1); x, y = x[keep], y[keep]" if nan else
                        "fix what the message names, then run bigtrain doctor again")]
    data, val = fit.data, fit.val
    if not getattr(data, "xs", None):
        raise SystemExit("bigtrain doctor: the script trains from a Dataset; the data checks "
                         "need arrays (x, y)")
    x, y = _numpy(data.xs[0]), _numpy(data.ys[0]) if data.ys else None
    x_test = _numpy(val.xs[0]) if val is not None and getattr(val, "xs", None) else None
    y_test = _numpy(val.ys[0]) if x_test is not None and val.ys else None
    findings = check_data(x, y, x_test, y_test) + _profile_findings(fit, x, y, x_test, y_test)
    if lr_test:
        finding = lr_test_finding(fit)
        findings += [finding] if finding is not None else []
    return findings


def _profile_findings(fit, x, y, x_test, y_test) -> list:
    """What the data profile adds to the data checks before any training: features off the
    standard scale, train/validation shift, a loss that does not fit the labels, likely
    label errors (the data checks' own findings are not repeated)."""
    from bigtrain.diagnose.baseline_checks import check_profile
    from bigtrain.diagnose.profile import profile_data
    losses = fit.model.compiled.losses
    profile = profile_data(x, y, x_test, y_test,
                           loss=losses[0].name if len(losses) == 1 else None)
    profile["data_findings"] = []
    return check_profile(profile, {})


def run_export(args) -> int:
    from bigtrain.engine.checkpoint import CheckpointError, export_safetensors
    try:
        shapes = export_safetensors(args.checkpoint, args.output)
    except (CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"bigtrain export: {e}") from None
    print(f"wrote {args.output}: {len(shapes)} tensors (load with model.load_weights)")
    return 0


def add_parsers(sub) -> None:
    e = sub.add_parser("export", help="write a checkpoint's full weights as one safetensors file")
    e.add_argument("checkpoint", help="a checkpoint_dir (its newest checkpoint) or one step-N folder")
    e.add_argument("output", help="the .safetensors file to write")
    p = sub.add_parser("plan", help="predict per-rank memory and step time of every strategy")
    p.add_argument("target", help="file.py:function (or module:function) returning a model")
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=32, help="global batch")
    p.add_argument("--device-memory", help="per-device memory, e.g. 80GB")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--device-kind", help="cpu, cuda (with --inventory), or a datasheet preset: "
                                         "a100-80gb, h100-80gb, h200")
    p.add_argument("--inventory", metavar="FILE",
                   help="device inventory from `bigtrain inventory --output FILE`: measured "
                        "speed, memory and bandwidth per device (mixed speeds are planned "
                        "as a mixed job)")
    i = sub.add_parser("inventory", help="measure this host's devices (matmul FLOP/s, memory, "
                                         "bandwidth) for the planner")
    i.add_argument("--output", "-o", metavar="FILE", help="save as JSON")
    r = sub.add_parser("report", help="render RUN_DIR/run.json as Markdown with PNG plots")
    r.add_argument("run_dir")
    d = sub.add_parser("doctor", help="explain slow training and poor model quality of a run "
                                      "(RUN_DIR), or check a script's data before training "
                                      "(SCRIPT.py)")
    d.add_argument("run_dir", metavar="RUN_DIR|SCRIPT.py")
    d.add_argument("--lr-test", action="store_true",
                   help="a short learning-rate range test from the initial weights of SCRIPT.py, "
                        "or of the script that trained RUN_DIR (recorded in its run.json)")
    d.add_argument("--json", action="store_true",
                   help="print the findings as a JSON list (kind, severity, evidence, advice, "
                        "impact), ranked")
