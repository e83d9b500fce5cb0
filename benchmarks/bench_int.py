"""Entry point: python benchmarks/bench_int.py [--json PATH] (same as `adadfq-fast bench int`)."""
import sys

from adadfq_fast.bench.int import main

if __name__ == "__main__":
    sys.exit(main())
