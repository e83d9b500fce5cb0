"""Memory-bound ceiling check: device-to-device copy bandwidth vs the fake-quant ops' forward on large tensors.

Bytes are counted as the op must move them: read the input once and write the output once (fake_quant_weight
and fake_quant_act read twice: one pass for min/max, one to quantize; both counts are reported). The copy's
bandwidth (read + write) is the ceiling the issue's "85% of copy" target is measured against.
Usage: python benchmarks/bench_bandwidth.py [--device cuda] [--sizes-mb 64 256] [--json PATH]
"""
import argparse
import json
import os
import sys

import torch

import adadfq_fast
from adadfq_fast import _backend
from adadfq_fast.bench.ops import environment
from adadfq_fast.bench.timer import time_variants


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes-mb", type=int, nargs="*", default=[64, 256])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    dev = args.device
    backends = [b for b in _backend.available_backends(dev)]
    records = []
    for mb in args.sizes_mb:
        n = mb * 2**20 // 4
        x = torch.randn(n, device=dev)
        w = x.view(1024, -1)  # 1024 output channels, like a large conv weight
        dst = torch.empty_like(x)
        lo, hi = x.amin(), x.amax()
        state = adadfq_fast.new_act_state(dev)
        fns = {"copy": lambda: dst.copy_(x)}
        for b in backends:
            def wrap(fn, b=b):
                def run():
                    with adadfq_fast.use_backend(b), torch.no_grad():
                        fn()
                return run
            fns[f"fake_quant[{b}]"] = wrap(lambda: adadfq_fast.fake_quant(x, 4, lo, hi))
            fns[f"fake_quant_weight[{b}]"] = wrap(lambda: adadfq_fast.fake_quant_weight(w, 4))
            fns[f"fake_quant_act[{b}]"] = wrap(lambda: adadfq_fast.fake_quant_act(x, 4, state))
        times = time_variants(fns, device=dev, repeats=args.repeats)
        copy_gbs = 2 * x.numel() * 4 / times["copy"] / 1e6
        for name, ms in times.items():
            passes = 2 if name == "copy" or name.startswith("fake_quant[") else 3
            gbs = passes * x.numel() * 4 / ms / 1e6
            records.append(dict(size_mb=mb, variant=name, ms=ms, gb_per_s=gbs,
                                fraction_of_copy=gbs / copy_gbs, bytes_counted=f"{passes} x tensor"))
    lines = ["| size MB | variant | ms | GB/s | of copy |", "|---|---|---|---|---|"]
    lines += [f"| {r['size_mb']} | {r['variant']} | {r['ms']:.3f} | {r['gb_per_s']:.1f} | {r['fraction_of_copy']:.0%} |"
              for r in records]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(environment=environment(dev), records=records), f, indent=1)
        with open(os.path.splitext(args.json)[0] + ".md", "w") as f:
            f.write("# Bandwidth: fake-quant forward vs device copy\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
