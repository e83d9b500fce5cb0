"""Benchmarks that ship with the package (``adadfq-fast bench ...``); ``benchmarks/`` holds thin entry points."""
