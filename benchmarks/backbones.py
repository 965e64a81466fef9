"""Forward+backward training steps/s of the registered backbones, side by side, fp32 and bf16 autocast.

    .venv/bin/python benchmarks/backbones.py --threads 2            # reference + small sizes
    .venv/bin/python benchmarks/backbones.py --batch 256 --tokens 60 --width 256 --depth 4 --heads 4

Each step is what a policy update costs its backbone: ``out = backbone(tokens, mask)`` in train
mode (dropout 0.1, as the reference GPT), ``out.square().mean().backward()``. The padding mask
left-pads a quarter of the rows (as the reference data loader pads short windows), which is the
masked-attention path; ``--mask none`` measures the unmasked fast path. GFLOP/s counts the matmul
work only (``6 * tokens * (12 W² depth + 2 N W depth)``: 3x the forward's) and is compared with the
~190 GFLOP/s that a 2048² fp32 matmul reaches on the 2-core reference machine (ANCHORS.md).

``--malloc tuned`` (the default) stops glibc from returning big freed blocks to the kernel
(``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2 GiB)``): without it every activation
over 32 MiB is a fresh ``mmap`` whose pages are faulted in and zeroed again at every step.
A cell whose warm-up step takes over ``--slow`` seconds is reported from that one step (marked ~):
bf16 matmuls are ~10x slower than fp32 on CPUs without native bf16 (AVX2-only).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import statistics
import time
from dataclasses import dataclass

import torch

from qtkit.build import instantiate
from qtkit.config import resolve_slot

FP32_PEAK_GFLOPS = 190.0


@dataclass
class Size:
    name: str
    batch: int
    tokens: int
    width: int
    depth: int
    heads: int

    def gflop(self) -> float:
        """Matmul GFLOP of one forward+backward step (3x the forward)."""
        per_token = 2 * self.depth * (12 * self.width**2 + 2 * self.tokens * self.width)
        return 3 * per_token * self.batch * self.tokens / 1e9


SIZES = [
    Size("reference", batch=256, tokens=60, width=256, depth=4, heads=4),
    Size("small", batch=64, tokens=60, width=128, depth=3, heads=1),
]


def build(name: str, size: Size, dropout: float) -> torch.nn.Module:
    spec = {"type": name, "width": size.width, "depth": size.depth, "heads": size.heads, "dropout": dropout}
    return instantiate("backbone", resolve_slot("backbone", spec, preset="<bench>"), {})


def make_mask(size: Size, kind: str) -> torch.Tensor | None:
    """``[B, N]`` bool: every 4th row left-padded by a random amount (whole 3-token steps)."""
    if kind == "none":
        return None
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(size.batch, size.tokens, dtype=torch.bool)
    for row in range(0, size.batch, 4):
        pad = 3 * int(torch.randint(1, size.tokens // 3, (1,), generator=gen))
        mask[row, :pad] = False
    return mask


def tune_malloc() -> bool:
    """Keep freed memory in glibc's heap (no per-step mmap/munmap + page zeroing); False if not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def time_steps(
    model: torch.nn.Module, size: Size, mask: torch.Tensor | None, bf16: bool, repeats: int, slow: float
) -> tuple[float, bool]:
    """Median seconds per forward+backward step after one warm-up step; (seconds, from warm-up only)."""
    x = torch.randn(size.batch, size.tokens, size.width)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = model(x, mask)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        if i == 0 and elapsed > slow:
            return elapsed, True
        if i:  # skip the warm-up step
            times.append(elapsed)
    return statistics.median(times), False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--batch", type=int, help="custom size (default: the reference and the small size)")
    parser.add_argument("--tokens", type=int, default=60, help="tokens per row (3 per step x K=20)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per cell (median)")
    parser.add_argument("--bf16", choices=["both", "only", "off"], default="both", help="bf16 CPU autocast")
    parser.add_argument("--backbones", default="gpt2,xformer", help="comma-separated registered names")
    parser.add_argument("--mask", choices=["left", "none"], default="left")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--malloc", choices=["tuned", "default"], default="tuned", help="see the docstring")
    parser.add_argument("--slow", type=float, default=30.0, help="seconds: report a slower cell from 1 step")
    args = parser.parse_args()

    tuned = args.malloc == "tuned" and tune_malloc()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = SIZES
    if args.batch is not None:
        sizes = [Size("custom", args.batch, args.tokens, args.width, args.depth, args.heads)]
    precisions = {"both": [False, True], "only": [True], "off": [False]}[args.bf16]
    names = [n.strip() for n in args.backbones.split(",") if n.strip()]

    print(f"threads={args.threads} torch={torch.__version__} cpu={torch.backends.cpu.get_cpu_capability()} "
          f"mask={args.mask} dropout={args.dropout} repeats={args.repeats} malloc={'tuned' if tuned else 'default'} "
          f"native-bf16={torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print("| size | B x N, width/depth/heads | backbone | precision | steps/s | ms/step | GFLOP/s | of 190 |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        mask = make_mask(size, args.mask)
        for bf16 in precisions:
            for name in names:
                model = build(name, size, args.dropout).train()
                sec, rough = time_steps(model, size, mask, bf16, args.repeats, args.slow)
                gflops = size.gflop() / sec
                mark = "~" if rough else ""
                print(
                    f"| {size.name} | {size.batch}x{size.tokens}, {size.width}/{size.depth}/{size.heads} | {name} | "
                    f"{'bf16' if bf16 else 'fp32'} | {mark}{1 / sec:.2f} | {1000 * sec:.0f} | {gflops:.0f} | "
                    f"{gflops / FP32_PEAK_GFLOPS:.0%} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
