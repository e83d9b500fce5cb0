"""``adadfq-fast`` command line (also ``python -m adadfq_fast``): a table of commands, each in its own module.

  adadfq-fast env                     versions, devices, and which backends are available or why not
  adadfq-fast train --config PRESET   the game loop (presets, .toml, or the authors' .hocon; key=value overrides)
  adadfq-fast pretrain [...]          train the FP teacher (default: ResNet-20 on Fashion-MNIST)
  adadfq-fast quantize [...]          the main job: AdaDFQ on the shipped Fashion-MNIST teacher, with a table
  adadfq-fast export CKPT --out FILE  a trained Q -> integer model file (see adadfq_fast/deploy)
  adadfq-fast infer FILE              evaluate an integer model file on a dataset
  adadfq-fast eval --model ... --checkpoint ... --dataset ...   top-1 of an FP model or a quantized checkpoint
  adadfq-fast bench ops [--json P]    fused ops vs the reference (see adadfq_fast/bench/ops.py)
  adadfq-fast bench step [...]        one game iteration, faithful vs fast (see adadfq_fast/bench/step.py)
  adadfq-fast bench int [...]         integer model vs float eager vs torch.ao int8 (see adadfq_fast/bench/int.py)

Every command is a ``main(argv) -> int`` that parses its own options; ``<command> --help`` lists them. A command's
module is imported only when it runs, so ``adadfq-fast env`` does not pay for the trainer's imports.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, NamedTuple, Optional, Sequence


class Command(NamedTuple):
    target: str  # "module:function", the function taking the command's arguments and returning the exit status
    help: str

    def run(self, argv: Sequence[str]) -> int:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)(list(argv))


COMMANDS: Dict[str, Command] = {
    "env": Command("adadfq_fast.cli.env:main", "versions, devices and available backends"),
    "train": Command("adadfq_fast.cli.train:main", "run AdaDFQ's game on a teacher ('train --help')"),
    "pretrain": Command("adadfq_fast.pretrain:main", "train a full-precision teacher ('pretrain --help')"),
    "quantize": Command("adadfq_fast.quantize_job:main", "the main job: quantize the shipped teacher ('quantize --help')"),
    "export": Command("adadfq_fast.deploy.cli:export_main", "export a trained Q as an integer model ('export --help')"),
    "infer": Command("adadfq_fast.deploy.cli:infer_main", "evaluate an integer model file ('infer --help')"),
    "eval": Command("adadfq_fast.cli.evaluate:main", "top-1 of a model or a quantized checkpoint ('eval --help')"),
    "bench ops": Command("adadfq_fast.bench.ops:main", "fused ops vs the reference ('bench ops --help')"),
    "bench step": Command("adadfq_fast.bench.step:main", "one game iteration, faithful vs fast ('bench step --help')"),
    "bench int": Command("adadfq_fast.bench.int:main", "the integer model vs float and torch.ao ('bench int --help')"),
}


def _parser() -> argparse.ArgumentParser:
    """The command table as argparse sees it: for ``--help`` and for errors about unknown commands."""
    parser = argparse.ArgumentParser(prog="adadfq-fast", description="Adaptive Data-Free Quantization, fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: Dict[str, list] = {}
    for name, cmd in COMMANDS.items():
        group, _, what = name.partition(" ")
        if what:
            groups.setdefault(group, []).append(what)
        else:
            sub.add_parser(name, help=cmd.help)
    for group, whats in groups.items():
        sub.add_parser(group, help=f"{group}: " + ", ".join(f"'{group} {w}'" for w in whats)).add_argument(
            "what", choices=whats)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The longest table entry that the first words name; its function gets the rest, untouched (argparse would
    # refuse options it does not know).
    for words in (2, 1):
        cmd = COMMANDS.get(" ".join(argv[:words])) if len(argv) >= words else None
        if cmd is not None:
            return cmd.run(argv[words:])
    _parser().parse_args(argv)  # no command: prints the usage, or the help, and exits
    return 2


if __name__ == "__main__":
    sys.exit(main())
