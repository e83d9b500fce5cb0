"""Time the authors' original AdaDFQ training iteration against our ``faithful`` and ``fast`` schedules (CPU).

Issue 4's target is "``faithful`` no slower than the original code's loop". This script measures that ratio in
ONE process, on the same model (ResNet-20, CIFAR-10), batch (16), bit widths (W4A4) and torch thread count:

* ``authors``: the authors' own ``Trainer.train`` (hfutqian/AdaDFQ, ``AdaDFQ/CIFAR/trainer.py``), imported from
  the checkout given by ``--authors-dir`` and run unchanged except for the patches listed below. One call of
  ``train(epoch)`` is one timed block of ``--iters`` iterations (their hard-coded value is 200); each iteration is
  their loop body: G forward, P forward with their BN hooks, Q forward, their margin/balance/BNS losses, Adam step
  on G, second Q forward, their KD loss, SGD step on Q (``epoch >= warmup_epochs``), plus their per-iteration
  bookkeeping (``compute_singlecrop``, a numpy accuracy). Their models are built by their own code:
  ``ptcv_get_model`` of their vendored pytorchcv (``pretrained=False``: random initialisation, no download),
  ``ExperimentDesign.quantize_model`` (Quant_Conv2d / Quant_Linear / QuantAct), ``Generator``, and the trainer
  from ``ExperimentDesign._set_trainer`` (their LR policies and optimisers).
* ``faithful_reference`` / ``faithful_fused`` / ``fast``: our ``GameStep`` built with the building blocks of
  ``adadfq_fast.bench.step`` (``build_players``, ``make_game``), run ``--iters`` times per block, exactly as
  ``adadfq-fast bench step`` runs them (Q stepped, activation ranges frozen).

Steady state for everyone (epochs >= 4, 99% of a run): ranges frozen, Q stepped. The authors' side gets one
warm-up block at epoch 0 first (ranges unfrozen, as their ``run()`` does for epochs 0-3; this also registers their
BN hooks, as their code does at epoch 0), then their ``freeze_model``; timed blocks use ``epoch = warmup_epochs``.
Every variant runs ``--warmup-blocks`` untimed blocks, then ``--repeats`` rounds A B C D, D C B A, ... (interleaved,
position in the round alternating);
ms/iteration = block time / iters; the table gives medians over rounds and the median of per-round ratios.

Patches applied to the authors' code (monkeypatching at import time / in memory, their files are not edited; the
script prints this list and writes it to the JSON/Markdown):
 1. ``torch.Tensor.cuda`` and ``nn.Module.cuda`` return ``self`` (their trainer calls ``.cuda()`` on every
    sampled tensor and loss module; there is no GPU here). Global for the process; our code never calls them.
 2. ``utils.data_parallel`` returns the model unchanged (theirs asserts a GPU and moves the model to it).
 3. ``main.py`` does not parse (spec "Known defects": lines 182-185, the ImageNet branch of ``_set_model``, lack
    one indentation level). Its source is read, those four lines get one more tab, and it is compiled in memory.
    Only its ``Generator``, ``ExperimentDesign.quantize_model/_set_trainer/freeze_model/unfreeze_model`` and its
    ``ptcv_get_model`` import are used.
 4. ``dataloader`` (imports torchvision, which is broken beside this CPU torch; no data is used) is replaced by a
    stub module before ``main.py`` imports it; ``termcolor`` (imported by their ``utils/log_print.py``, not
    installed here, used only for coloured log text) by a stub whose ``colored`` returns the text.
 5. ``Option`` does not read ``network``, ``alpha_ds``, ``alpha_as``, ``lambda_l``, ``lambda_u``, ``beta``,
    ``gamma`` from the config although ``main.py``/``trainer.py`` use them: they are copied from the parsed
    config (``cifar10_resnet20.hocon``). ``qw``/``qa`` are set to ``--wbits``/``--abits`` (the file says 3;
    its comment lists 3/4/5). ``set_save_path``/``_set_gpu``/``_set_dataloader``/``ExperimentDesign.__init__``
    are not called (save directory with ``input()``, GPU assert, data); the attributes they would set are set.
 6. ``ptcv_get_model(network, pretrained=False)`` instead of ``pretrained=True`` (no weights, no network).
 7. Only with ``--iters`` other than 200: ``Trainer.train``'s source gets ``iters = 200`` replaced by
    ``iters = <N>`` and is recompiled in their module's namespace; nothing else in it changes.
 8. ``utils/compute.py``'s ``accuracy`` (their per-iteration bookkeeping) does ``correct[:k].view(-1)`` on a
    non-contiguous tensor, which raises on current torch: recompiled in memory with ``.reshape(-1)``.
Not patched (does not crash at batch 16): the margin loss's hard-coded ``torch.zeros(16)``, the BN-statistics
lists that grow forever (``teacher_running_mean/var`` get 19 references per iteration, never cleared).

Usage:
  mkdir -p /tmp/authors && git -C <fetched AdaDFQ git dir> archive HEAD | tar x -C /tmp/authors
  python benchmarks/authors_loop.py --authors-dir /tmp/authors --authors-commit <sha> --threads 1 \
      [--iters 50 --repeats 7]
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
import types

import torch
from torch import nn

PATCHES = []


def _patch(msg: str) -> None:
    PATCHES.append(msg)


def _cifar_dir(authors_dir: str) -> str:
    for cand in (os.path.join(authors_dir, "AdaDFQ", "CIFAR"), os.path.join(authors_dir, "CIFAR"), authors_dir):
        if os.path.isfile(os.path.join(cand, "trainer.py")) and os.path.isfile(os.path.join(cand, "main.py")):
            return os.path.abspath(cand)
    raise SystemExit(f"--authors-dir {authors_dir}: no AdaDFQ/CIFAR/{{trainer,main}}.py under it")


def load_authors(authors_dir: str, iters: int):
    """Import the authors' CIFAR code with the minimal patches; returns (main module, trainer module)."""
    cifar = _cifar_dir(authors_dir)
    sys.path.insert(0, cifar)  # their top-level modules: trainer, utils, options, pytorchcv, quantization_utils

    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[assignment]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[assignment]
    _patch("1. torch.Tensor.cuda / nn.Module.cuda -> identity (CPU only; their trainer calls .cuda() everywhere)")

    try:
        import termcolor  # noqa: F401
    except ImportError:
        stub = types.ModuleType("termcolor")
        stub.colored = lambda text, *a, **k: text
        sys.modules["termcolor"] = stub
        _patch("4a. stub module 'termcolor' (not installed; their utils/log_print.py imports it for coloured logs)")
    dl = types.ModuleType("dataloader")
    dl.DataLoader = None
    sys.modules["dataloader"] = dl
    _patch("4b. stub module 'dataloader' (theirs imports torchvision, broken beside CPU torch; no data is used)")

    import utils as a_utils  # their utils package
    import trainer as a_trainer

    a_utils.data_parallel = lambda model, ngpus, gpu0=0: model
    _patch("2. utils.data_parallel -> returns the model (theirs asserts a GPU and calls .cuda())")

    path = os.path.join(cifar, "main.py")
    with open(path) as f:
        lines = f.read().split("\n")
    try:
        compile("\n".join(lines), path, "exec")
        _patch("3. (main.py parsed as it is; no indentation fix needed)")
    except SyntaxError:
        # lines 182-185 (1-based): the body of `if self.settings.network in ["resnet18", ...]:` lacks one indent
        for i in range(181, 185):
            assert lines[i].startswith("\t\t\t") and "self." in lines[i], (i + 1, lines[i])
            lines[i] = "\t" + lines[i]
        _patch("3. main.py does not parse: lines 182-185 (ImageNet branch of _set_model) re-indented by one tab, "
               "compiled in memory")
    code = compile("\n".join(lines), path, "exec")
    a_main = types.ModuleType("authors_main")
    a_main.__file__ = path
    sys.modules["authors_main"] = a_main
    exec(code, a_main.__dict__)

    a_compute = sys.modules["utils.compute"]
    a_compute.accuracy = _resource(a_compute.accuracy, ".view(-1).float()", ".reshape(-1).float()")
    _patch("8. utils/compute.py accuracy(): 'correct[:k].view(-1)' -> '.reshape(-1)' (recompiled in memory; with "
           "torch >= 1.x, `pred.t()` is not contiguous and .view raises; same values)")
    if iters != 200:
        a_trainer.Trainer.train = _resource(a_trainer.Trainer.train, "iters = 200", f"iters = {int(iters)}")
        _patch(f"7. Trainer.train: hard-coded 'iters = 200' -> 'iters = {iters}' (source recompiled in memory)")
    return a_main, a_trainer


def _resource(fn, old: str, new: str):
    """Recompile function ``fn`` from its source with ``old`` replaced by ``new`` (exactly one occurrence), in
    its own module's namespace, keeping its file name and line numbers (tracebacks point at their file)."""
    lines, start = inspect.getsourcelines(fn)
    src = textwrap.dedent("".join(lines))
    assert src.count(old) == 1, (fn.__qualname__, old)
    src = "\n" * (start - 1) + src.replace(old, new)
    mod = sys.modules[fn.__module__]
    ns: dict = {}
    exec(compile(src, mod.__file__, "exec"), mod.__dict__, ns)
    return ns[fn.__name__]


def build_authors(a_main, cifar: str, wbits: int, abits: int, seed: int):
    Option = sys.modules["options"].Option
    opt = Option(os.path.join(cifar, "cifar10_resnet20.hocon"))
    for k in ("network", "alpha_ds", "alpha_as", "lambda_l", "lambda_u", "beta", "gamma"):
        setattr(opt, k, opt.conf[k])
    opt.qw, opt.qa = wbits, abits
    opt.manualSeed = seed
    _patch("5. Option: network/alpha_ds/alpha_as/lambda_l/lambda_u/beta/gamma copied from cifar10_resnet20.hocon "
           f"(their Option does not read them); qw={wbits}, qa={abits}; ExperimentDesign.__init__ (save dir with "
           "input(), GPU assert, data loaders) bypassed, its attributes set directly")
    torch.manual_seed(seed)
    generator = a_main.Generator(opt)
    exp = a_main.ExperimentDesign.__new__(a_main.ExperimentDesign)
    exp.settings, exp.generator = opt, generator
    exp.train_loader = exp.test_loader = None
    exp.optimizer_state, exp.trainer, exp.start_epoch = None, None, 0
    exp.unfreeze_Flag = True
    exp.logger = logging.getLogger("authors_loop")
    exp.model = a_main.ptcv_get_model(opt.network, pretrained=False)
    exp.model_teacher = a_main.ptcv_get_model(opt.network, pretrained=False)
    exp.model_teacher.eval()
    _patch(f"6. ptcv_get_model('{opt.network}', pretrained=False) (their vendored pytorchcv; random init)")
    exp._replace()  # their quantize_model
    exp._set_trainer()
    return exp, opt


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(cpu=cpu, logical_cpus=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                numpy=__import__("numpy").__version__, platform=platform.platform())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors-dir", required=True, help="checkout of hfutqian/AdaDFQ (contains AdaDFQ/CIFAR)")
    p.add_argument("--authors-commit", default=None,
                   help="commit of the checkout, recorded in the output (default: git rev-parse in --authors-dir)")
    p.add_argument("--iters", type=int, default=200, help="iterations per timed block (their train() does 200)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (each variant once per round)")
    p.add_argument("--warmup-blocks", type=int, default=1, help="untimed blocks per variant before timing")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every variant")
    p.add_argument("--wbits", type=int, default=4)
    p.add_argument("--abits", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "authors_loop_cpu"))
    args = p.parse_args(argv)
    command = "python " + " ".join([os.path.relpath(os.path.abspath(__file__), os.getcwd())] + sys.argv[1:]
                                   if argv is None else ["benchmarks/authors_loop.py"] + list(argv))
    torch.set_num_threads(args.threads)
    batch = 16

    # ---- the authors' side --------------------------------------------------------------------------------
    cifar = _cifar_dir(args.authors_dir)
    a_main, a_trainer = load_authors(args.authors_dir, args.iters)
    exp, opt = build_authors(a_main, cifar, args.wbits, args.abits, args.seed)
    assert opt.batchSize == batch and opt.nClasses == 10, (opt.batchSize, opt.nClasses)
    trainer = exp.trainer
    authors_commit = args.authors_commit
    for d in () if authors_commit else (args.authors_dir, cifar):
        try:
            authors_commit = subprocess.run(["git", "-C", d, "rev-parse", "HEAD"], capture_output=True, text=True,
                                            check=True).stdout.strip() or None
            break
        except Exception:
            pass

    # ---- ours (adadfq_fast.bench.step building blocks) ----------------------------------------------------
    import adadfq_fast
    from adadfq_fast.bench.step import build_players, make_game

    players = build_players("resnet20_cifar10", batch, args.wbits, args.abits, "cpu", args.seed)
    ours = {
        "faithful_reference": ("faithful", "reference"),
        "faithful_fused": ("faithful", "auto"),
        "fast": ("fast", "auto"),
    }
    fns = {}

    def authors_block(epoch):
        trainer.train(epoch=epoch)

    def make_block(game, backend):
        def block():
            with adadfq_fast.use_backend(backend):
                for _ in range(args.iters):
                    game(step_q=True, ranges_frozen=True)
        return block

    fns["authors"] = lambda: authors_block(opt.warmup_epochs)
    for name, (schedule, backend) in ours.items():
        fns[name] = make_block(make_game(players, schedule, batch), backend)

    print("patches applied to the authors' code:")
    for m in PATCHES:
        print("  " + m)
    print(f"threads={torch.get_num_threads()} iters/block={args.iters} repeats={args.repeats} batch={batch} "
          f"W{args.wbits}A{args.abits}", flush=True)

    # authors' warm-up as in their run(): epoch 0 with ranges unfrozen (registers the BN hooks), then frozen
    t0 = time.perf_counter()
    exp.unfreeze_model(exp.model)
    trainer.train(epoch=0)
    exp.freeze_model(exp.model)
    print(f"authors warm-up block (epoch 0, ranges unfrozen): {(time.perf_counter() - t0) * 1e3 / args.iters:.2f} "
          "ms/iter (not counted)", flush=True)
    for name, fn in fns.items():
        for _ in range(args.warmup_blocks):
            fn()
    samples = {k: [] for k in fns}
    loads = []
    names = list(fns)
    for r in range(args.repeats):
        # A B C D, then D C B A, ...: interleaved, and each variant's position in the round alternates, so a
        # position effect (e.g. the variant after the authors' host-syncing bookkeeping) cancels in the medians
        for name in names if r % 2 == 0 else names[::-1]:
            fn = fns[name]
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3 / args.iters)
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.repeats}: " + "  ".join(f"{k} {v[-1]:.2f}" for k, v in samples.items())
              + f"  (load {loads[-1]:.2f})", flush=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    ratio_medians = {k: med["authors"] / med[k] for k in ours}
    ratio_paired = {k: statistics.median(a / b for a, b in zip(samples["authors"], samples[k])) for k in ours}
    result = dict(
        description="ms per training iteration (G step + Q step), ResNet-20 CIFAR-10, batch 16, CPU; authors' "
                    "Trainer.train vs our GameStep, interleaved in one process",
        ms_per_iter=med, samples_ms_per_iter=samples,
        speedup_vs_authors_from_medians=ratio_medians, speedup_vs_authors_paired_median=ratio_paired,
        faithful_no_slower_than_authors=med["faithful_reference"] <= med["authors"],
        settings=dict(model="resnet20_cifar10", batch=batch, wbits=args.wbits, abits=args.abits,
                      threads=torch.get_num_threads(), iters_per_block=args.iters, repeats=args.repeats,
                      warmup_blocks=args.warmup_blocks, seed=args.seed,
                      order="rounds alternate " + " ".join(fns) + " / reversed", steady_state="ranges frozen, Q stepped",
                      authors_epoch=opt.warmup_epochs),
        patches=sorted(PATCHES, key=lambda m: m.split(".")[0].zfill(3)), authors_repo="hfutqian/AdaDFQ", authors_commit=authors_commit,
        authors_dir=os.path.abspath(args.authors_dir), machine=machine(), load_average_after_rounds=loads,
        adadfq_fast_version=adadfq_fast.__version__, command=command,
        date_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


def markdown(r: dict) -> str:
    s, m = r["settings"], r["machine"]
    rows = [("authors", "authors' `Trainer.train` (their code, patched to run on CPU)")] + [
        ("faithful_reference", "ours, `faithful`, `reference` backend (the authors' math as PyTorch ops)"),
        ("faithful_fused", "ours, `faithful`, fused kernels (`auto` -> `cpp`)"),
        ("fast", "ours, `fast`, fused kernels")]
    out = [
        "# The authors' AdaDFQ iteration vs ours (CPU)", "",
        f"ResNet-20 / CIFAR-10, batch {s['batch']}, W{s['wbits']}A{s['abits']}, steady state ({s['steady_state']}; "
        f"authors at epoch {s['authors_epoch']}), torch threads = {s['threads']}, {s['iters_per_block']} "
        f"iterations per timed block, {s['repeats']} interleaved rounds ({s['order']}), {s['warmup_blocks']} warm-up block(s) per "
        "variant excluded. ms/iteration = median over rounds.", "",
        "| variant | ms / iter | authors / variant (medians) | authors / variant (median of per-round ratios) |",
        "|---|---|---|---|",
    ]
    for k, label in rows:
        ms = r["ms_per_iter"][k]
        if k == "authors":
            out.append(f"| {label} | {ms:.2f} | 1.00x | 1.00x |")
        else:
            out.append(f"| {label} | {ms:.2f} | {r['speedup_vs_authors_from_medians'][k]:.2f}x | "
                       f"{r['speedup_vs_authors_paired_median'][k]:.2f}x |")
    out += ["", f"`faithful` (reference) no slower than the authors' loop: **{r['faithful_no_slower_than_authors']}**",
            "", "Per-round samples (ms/iter):", ""]
    for k, v in r["samples_ms_per_iter"].items():
        out.append(f"- {k}: " + ", ".join(f"{x:.2f}" for x in v))
    out += ["", f"Load average (1 min) after each round: {', '.join(f'{x:.2f}' for x in r['load_average_after_rounds'])} "
            "(the 2-core machine is shared with a training run and other agents).", "",
            f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['platform']}, Python {m['python']}, "
            f"torch {m['torch']}, numpy {m['numpy']}, adadfq_fast {r['adadfq_fast_version']}.", "",
            f"Authors' code: {r['authors_repo']} at {r['authors_commit'] or '(commit unknown: not a git checkout)'}, "
            "imported from the checkout given on the command line (nothing copied into this repository).", "",
            "Patches applied to the authors' code (in memory, their files unchanged):", ""]
    out += [f"- {p}" for p in r["patches"]]
    out += ["", "What each side runs per iteration: the authors' loop body (trainer.py lines 215-272: G forward, "
            "P forward with their BN hooks, Q forward, margin + balance + BNS losses, Adam step on G, second Q "
            "forward on x.detach(), their KD loss, SGD step on Q, per-iteration accuracy bookkeeping with host "
            "syncs) and our `GameStep` (`adadfq_fast/game/schedules.py`) built by `adadfq_fast.bench.step`'s "
            "`build_players`/`make_game`. Weights on both sides are random initialisations of the same "
            "architecture (timing does not depend on their values).", "",
            f"Command (repository root, {r['date_utc']}):", "", "```", r["command"], "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
