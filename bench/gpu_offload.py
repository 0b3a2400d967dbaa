"""A script for a GPU machine: what `fsdp_offload` saves on one GPU.

1. Peak GPU memory of one training step of the 124M GPT (GPTConfig.gpt2(), bf16-mixed, Adam)
   without offload (the whole model, gradients and Adam state on the GPU) and with
   `fsdp_offload` (parameters, gradients and Adam state on the host; each layer's parameters
   copied to the GPU for its forward and backward).
2. The largest GPT that trains (two steps without running out of memory) on one GPU, with
   and without offload: widths and depths from GPT-2 124M up to ~13B parameters, each tried
   in a fresh process so one failure cannot spoil the next.

`--gpu-memory-gb G` caps what this process may take of the GPU (torch's per-process memory
fraction), to see the effect on a smaller card; host memory bounds offload (16 bytes per
parameter of fp32 Adam state), so the largest offloaded model depends on the host too.
It refuses to run without CUDA; `--dry-run` walks the same code on the CPU with tiny models
(no memory figures) to check the script itself.

    python bench/gpu_offload.py                       # both parts, ~10 minutes on one GPU
    python bench/gpu_offload.py --gpu-memory-gb 24    # as if the GPU had 24 GB
    python bench/gpu_offload.py --dry-run             # CPU, seconds
    python bench/gpu_offload.py --max-seconds 200     # stop climbing the ladder after 200 s
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

# (n_layer, n_head, n_embd): GPT-2 124M, 350M, 774M, 1.5B, then GPT-3-style 2.7B, 6.7B, 13B
LADDER = [(12, 12, 768), (24, 16, 1024), (36, 20, 1280), (48, 25, 1600),
          (32, 32, 2560), (32, 32, 4096), (40, 40, 5120)]
TINY = [(2, 2, 32), (4, 4, 64)]


def one_trial(shape, offload: bool, batch: int, seq: int, dry: bool) -> dict:
    """Two training steps of a GPT of `shape` on this process's device; peak memory."""
    from bigtrain.engine.step import train_step
    from bigtrain.engine.steps import autocast_factory
    from bigtrain.parallel.context import StepContext
    from bigtrain.parallel.base import DistEnv, StepBatch, Strategy
    from bigtrain.parallel.sharded import Sharded
    from bigtrain.zoo.gpt import GPT, GPTConfig, gpt_loss
    device = torch.device("cpu" if dry else "cuda", 0)
    n_layer, n_head, n_embd = shape
    cfg = GPTConfig(vocab_size=512 if dry else 50304, block_size=seq, n_layer=n_layer,
                    n_head=n_head, n_embd=n_embd)
    strategy = Sharded(reshard_after_forward=True, offload=True) if offload else Strategy()
    strategy.use_precision("bf16-mixed")
    strategy.setup(DistEnv(device=device))
    try:
        with torch.device("cpu" if offload else device):  # offload: the GPU never holds it all
            model = GPT(cfg)
        params = sum(p.numel() for p in model.parameters())
        module = strategy.setup_module(model)
        opt = strategy.setup_optimizer(module, lambda ps: torch.optim.Adam(ps, lr=1e-4))
        x = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
        if not dry:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(2):
            train_step(strategy, StepContext(), module, opt, StepBatch([(x, x, None)], [1.0]),
                       lambda o, y, sw: gpt_loss(o, y, sw),
                       autocast_factory("bf16-mixed", device))
        if not dry:
            torch.cuda.synchronize(device)
        peak = None if dry else torch.cuda.max_memory_allocated(device)
        return {"ok": True, "params": params, "peak_bytes": peak,
                "step_s": (time.perf_counter() - t0) / 2}
    except torch.OutOfMemoryError as e:
        return {"ok": False, "error": str(e).splitlines()[0]}
    finally:
        strategy.teardown()


def _child(args) -> None:
    if args.gpu_memory_gb and not args.dry_run:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_memory_gb * 1e9 / total))
    shape = tuple(int(v) for v in args.trial.split(","))
    print(json.dumps(one_trial(shape, args.offload, args.batch, args.seq, args.dry_run)))


def trial(shape, offload: bool, args) -> dict:
    """One trial in a fresh interpreter (a failed allocation leaves nothing behind)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--trial", ",".join(map(str, shape)),
           "--batch", str(args.batch), "--seq", str(args.seq)]
    cmd += ["--offload"] if offload else []
    cmd += ["--dry-run"] if args.dry_run else []
    cmd += ["--gpu-memory-gb", str(args.gpu_memory_gb)] if args.gpu_memory_gb else []
    left = args.deadline - time.monotonic()
    if left < 5:
        return {"ok": False, "error": f"not tried: --max-seconds {args.max_seconds:.0f} spent"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=min(1200, left))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"still running after {left:.0f} s (--max-seconds)"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"ok": False, "error": f"exit {done.returncode}: {tail[0]}"}
    return json.loads(lines[-1])


def _gb(n) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f} GB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--gpu-memory-gb", type=float, default=None)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=1e9,
                    help="time for the whole run; trials not finished by then are skipped")
    ap.add_argument("--trial", help=argparse.SUPPRESS)
    ap.add_argument("--offload", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trial:
        return _child(args)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_offload.py measures GPU memory and needs CUDA; --dry-run checks "
                         "the script on the CPU")
    args.deadline = time.monotonic() + args.max_seconds
    if args.dry_run:
        args.seq = min(args.seq, 32)
    ladder = TINY if args.dry_run else LADDER
    print(f"batch {args.batch} x {args.seq} tokens, bf16-mixed, Adam; "
          f"GPU cap: {args.gpu_memory_gb or 'none'} GB")
    print(f"\n1. peak GPU memory, GPT {ladder[0]} (n_layer, n_head, n_embd)")
    for offload in (False, True):
        r = trial(ladder[0], offload, args)
        name = "fsdp_offload" if offload else "no offload"
        print(f"   {name:<13} " + (f"peak {_gb(r['peak_bytes'])}, {r['step_s']:.2f} s/step"
                                   if r["ok"] else f"failed: {r['error']}"))
    print("\n2. largest GPT that trains")
    for offload in (False, True):
        best = None
        for shape in ladder:
            r = trial(shape, offload, args)
            if not r["ok"]:
                print(f"   {'offload' if offload else 'no offload':<10} {shape}: {r['error']}")
                break
            best = (shape, r)
        name = "fsdp_offload" if offload else "no offload"
        if best:
            (layers, _, width), r = best
            print(f"   {name:<13} {r['params'] / 1e6:,.1f}M params ({layers} layers, width "
                  f"{width}), peak {_gb(r['peak_bytes'])}")
        else:
            print(f"   {name:<13} not even the smallest")


if __name__ == "__main__":
    main()
