"""A script for a GPU machine: the 124M GPT in bf16 on one GPU, `fit` against nanoGPT-style
hand loops, with tokens/s and MFU.

Model: bigtrain.zoo GPT, GPTConfig.gpt2() (12 layers, width 768, 12 heads, 1024 tokens,
vocab 50304; 124M parameters); batch `--batch` x 1024 random tokens; AdamW (lr 6e-4,
weight decay 0.1); next-token cross-entropy. Contenders, alternating in every repeat, each
timing one epoch of `--steps` steps after a warm-up epoch:
    fit            Model(GPT).compile("adamw", SparseCategoricalCrossentropy(from_logits=True))
                   then fit(x, y, batch_size, epochs=1, precision="bf16-mixed"), the whole call
                   (its device: this process's GPU).
    hand eager     nanoGPT's loop without torch.compile: the data on the GPU, bf16 autocast,
                   fused AdamW, F.cross_entropy on the flattened logits.
    hand compiled  the same loop on torch.compile(model) (nanoGPT's default); `--no-compile`
                   leaves it out.
MFU = training FLOPs per step (torch's FlopCounterMode over one forward and backward on the
device) / step time / peak. Two peaks are given: the device's dense bf16 figure from
bigtrain's device table (H200 / H100: 989 TFLOP/s) and the best bf16 8192^3 matmul measured
here, which is what a step could reach at best.

The run stops starting repeats after `--max-seconds`. It refuses to run without CUDA;
`--dry-run` walks the same code on the CPU with a tiny GPT in seconds (no figures) to check
the script itself.

    python bench/gpu_gpt.py                      # 3 repeats of 20 steps, batch 16: ~3 min
    python bench/gpu_gpt.py --batch 32 --steps 10
    python bench/gpu_gpt.py --dry-run            # CPU, seconds
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bigtrain.zoo.gpt import GPT, GPTConfig  # noqa: E402

LR, WEIGHT_DECAY = 6e-4, 0.1
NOMINAL_BF16 = {"h200": 989e12, "h100": 989e12, "a100": 312e12}


def config(dry: bool) -> GPTConfig:
    return (GPTConfig(vocab_size=512, block_size=32, n_layer=2, n_head=2, n_embd=32) if dry
            else GPTConfig.gpt2())


def data(cfg: GPTConfig, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token rows and their next tokens, (samples, T) int64 on the host."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (samples, cfg.block_size), generator=g)
    return x, torch.roll(x, -1, 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_contender(cfg, x, y, batch: int, device):
    """One fit call of one epoch over (x, y), as a user would write it."""
    import bigtrain
    from bigtrain.losses import SparseCategoricalCrossentropy
    from bigtrain.models import Model
    from bigtrain.optimizers import AdamW
    bigtrain.set_seed(0)
    model = Model(GPT(cfg))
    model.compile(optimizer=AdamW(learning_rate=LR, weight_decay=WEIGHT_DECAY),
                  loss=SparseCategoricalCrossentropy(from_logits=True))
    precision = "bf16-mixed" if device.type == "cuda" else "32"
    xs, ys = x.numpy(), y.numpy()

    def run():
        model.fit(xs, ys, batch_size=batch, epochs=1, verbose=0, shuffle=False,
                  precision=precision)
    return run


def hand_contender(cfg, x, y, batch: int, device, compiled: bool):
    """nanoGPT's train loop: tokens already on the device, bf16 autocast, fused AdamW."""
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=fused)
    # on the CPU (a dry run) dynamo traces the model without inductor's C++ build
    backend = "inductor" if device.type == "cuda" else "eager"
    step_model = torch.compile(model, backend=backend) if compiled else model
    xd, yd = x.to(device), y.to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def run():
        model.train()
        for start in range(0, len(xd), batch):
            xb, yb = xd[start:start + batch], yd[start:start + batch]
            with amp:
                logits = step_model(xb)  # (B, T, V)
                loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size).float(),
                                       yb.reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        float(loss.detach())  # one host read per epoch, as a progress line would
    return run


def step_flops(cfg, batch: int, device) -> float:
    """Training FLOPs of one step at `batch`: forward + backward (FlopCounterMode)."""
    model = GPT(cfg).to(device)
    x, y = (t.to(device) for t in data(cfg, batch))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x).reshape(-1, cfg.vocab_size), y.reshape(-1)).backward()
    del model
    return float(counter.get_total_flops())


def matmul_peak(device, n: int = 8192, repeats: int = 10) -> float:
    """Best bf16 n x n matmul FLOP/s on `device`."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def nominal_peak(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    return next((v for k, v in NOMINAL_BF16.items() if k in name), None)


def timed(run, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - t0


def measure(contenders: dict, device, repeats: int, max_seconds: float) -> dict[str, list]:
    """Seconds per epoch of each contender, alternating; warm-up epoch first (not kept)."""
    for run in contenders.values():
        run()
    sync(device)
    times = {name: [] for name in contenders}
    start = time.perf_counter()
    for r in range(repeats):
        if r and time.perf_counter() - start > max_seconds:
            print(f"stopping after {r} repeats: --max-seconds {max_seconds:.0f} spent")
            break
        for name, run in contenders.items():
            times[name].append(timed(run, device))
    return times


def report(times: dict, cfg, batch: int, steps: int, flops: float, peaks: dict) -> None:
    tokens = batch * cfg.block_size * steps
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\n{'contender':<14} {'s/epoch (median)':>17} {'tokens/s':>12} "
          + " ".join(f"{'MFU vs ' + k:>18}" for k in peaks))
    for name, s in med.items():
        mfu = " ".join(f"{100 * flops * steps / s / p:>17.1f}%" for p in peaks.values())
        print(f"{name:<14} {s:>17.3f} {tokens / s:>12,.0f} {mfu}")
        print(f"{'':<14} repeats: " + ", ".join(f"{t:.3f}" for t in times[name]))
    for name in med:
        if name != "fit":
            print(f"fit / {name}: {med[name] / med['fit']:.3f}x (throughput ratio; goal >= 1.0)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=240.0)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_gpt.py measures a GPU and needs CUDA; --dry-run checks the "
                         "script on the CPU")
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    if args.dry_run:
        args.batch, args.steps, args.repeats = 2, 2, 1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = config(args.dry_run)
    x, y = data(cfg, args.batch * args.steps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"{name}; torch {torch.__version__}; GPT {cfg.n_layer} layers, width {cfg.n_embd}, "
          f"{cfg.block_size} tokens; batch {args.batch}; {args.steps} steps per epoch")
    flops = step_flops(cfg, args.batch, device)
    peaks = {"measured": matmul_peak(device, 256 if args.dry_run else 8192)}
    if nominal_peak(device):
        peaks["nominal"] = nominal_peak(device)
    print(f"FLOPs per step {flops:.3e}; peaks: "
          + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in peaks.items()))
    contenders = {"fit": fit_contender(cfg, x, y, args.batch, device),
                  "hand eager": hand_contender(cfg, x, y, args.batch, device, False)}
    if not args.no_compile:
        contenders["hand compiled"] = hand_contender(cfg, x, y, args.batch, device, True)
    times = measure(contenders, device, args.repeats, args.max_seconds)
    report(times, cfg, args.batch, args.steps, flops, peaks)


if __name__ == "__main__":
    main()
