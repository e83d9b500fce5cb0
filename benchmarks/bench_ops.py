"""Entry point: python benchmarks/bench_ops.py [--json PATH] (same as `adadfq-fast bench ops`)."""
import sys

from adadfq_fast.bench.ops import main

if __name__ == "__main__":
    sys.exit(main())
