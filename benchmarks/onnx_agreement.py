"""Top-1 agreement of the QDQ ONNX export with Q (the fake-quant network it came from) on the 10k Fashion-MNIST
test images, in ONNX Runtime and OpenVINO, at W8A8 and W4A4.

    python benchmarks/onnx_agreement.py                      # quantize the shipped teacher, export, compare
    python benchmarks/onnx_agreement.py --bits 8 --iters-per-epoch 10

Q is a quick `adadfq-fast quantize --method adadfq` run of the shipped teacher (adadfq_fast/weights/) at a small
budget (default: 1 warm-up epoch calibrating the ranges, then 1 epoch of the game, 100 iterations each: with
fewer, the original's compounding range correction (docs/spec.md) has not settled and Q is at chance); its
checkpoint is exported (`adadfq_fast.deploy.export`, then `onnx_export.to_onnx`) and Q, the integer model, the
ONNX model in ONNX Runtime and in OpenVINO all classify the same test images. A runtime that is not installed is
recorded as such. Writes benchmarks/results/onnx_agreement.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    for name in ("onnx", "onnxruntime", "openvino"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def _quick_q(bits: int, args, work: str) -> str:
    from adadfq_fast import quantize_job

    out = os.path.join(work, f"w{bits}a{bits}")
    ckpt = os.path.join(out, f"q_adadfq_w{bits}a{bits}.pt")
    if not os.path.isfile(ckpt):
        quantize_job.main(["--method", "adadfq", "--bits", str(bits), "--epochs", str(args.epochs),
                           "--warmup-epochs", str(args.warmup_epochs), "--iters-per-epoch", str(args.iters_per_epoch),
                           "--eval-images", "1000", "--seed", str(args.seed), "--no-plots", "--no-progress",
                           "--out", out])
    return ckpt


def _runtimes(proto):
    """name -> (callable images -> logits) or the reason it is unavailable."""
    blob = proto.SerializeToString()
    out = {}
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        out["onnxruntime"] = lambda x: sess.run(None, {"input": x})[0]
    except ImportError as e:
        out["onnxruntime"] = f"not installed ({e})"
    try:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(blob), "CPU")
        out["openvino"] = lambda x: np.asarray(compiled(x)[0])
    except ImportError as e:
        out["openvino"] = f"not installed ({e})"
    return out


def measure(bits: int, ckpt: str, loader) -> dict:
    from adadfq_fast.deploy import export
    from adadfq_fast.deploy.onnx_export import to_onnx
    from adadfq_fast.nn import load_q_checkpoint

    q, payload = load_q_checkpoint(ckpt)
    im = export(q, in_size=tuple(payload["in_size"]))
    proto, report = to_onnx(im)
    runs = _runtimes(proto)
    preds = {"q": [], "integer": []}
    preds.update({k: [] for k, v in runs.items() if callable(v)})
    max_diff = {k: 0.0 for k in preds if k != "q"}
    labels = []
    seconds = {k: 0.0 for k in preds}
    with torch.no_grad():
        for x, y in loader:
            labels.append(torch.as_tensor(y))
            t0 = time.perf_counter()
            lq = q(x)
            seconds["q"] += time.perf_counter() - t0
            preds["q"].append(lq.argmax(1))
            t0 = time.perf_counter()
            li = im(x)
            seconds["integer"] += time.perf_counter() - t0
            preds["integer"].append(li.argmax(1))
            max_diff["integer"] = max(max_diff["integer"], float((li - lq).abs().max()))
            xn = x.numpy()
            for name, fn in runs.items():
                if not callable(fn):
                    continue
                t0 = time.perf_counter()
                lo = torch.from_numpy(np.ascontiguousarray(fn(xn)))
                seconds[name] += time.perf_counter() - t0
                preds[name].append(lo.argmax(1))
                max_diff[name] = max(max_diff[name], float((lo - lq).abs().max()))
    y = torch.cat(labels)
    pq = torch.cat(preds["q"])
    n = int(y.numel())
    res = {"bits": bits, "checkpoint": os.path.basename(ckpt), "images": n, "report": report,
           "q_top1": 100.0 * float((pq == y).float().mean()), "runtimes": {}}
    for name in preds:
        if name == "q":
            continue
        p = torch.cat(preds[name])
        res["runtimes"][name] = {
            "top1": 100.0 * float((p == y).float().mean()),
            "agreement_with_q": 100.0 * float((p == pq).float().mean()),
            "disagreements": int((p != pq).sum()),
            "max_abs_logit_diff": max_diff[name],
            "ms_per_image": 1000.0 * seconds[name] / n,
        }
    res["q_ms_per_image"] = 1000.0 * seconds["q"] / n
    for name, fn in runs.items():
        if not callable(fn):
            res["runtimes"][name] = {"unavailable": fn}
    return res


def markdown(data: dict) -> str:
    lines = ["QDQ ONNX export of Q vs Q itself: top-1 agreement on the Fashion-MNIST test set "
             f"({data['results'][0]['images']} images), ResNet-20 (shipped teacher), Q from `{data['q_recipe']}`.",
             "", "| bits | runtime | top-1 agreement with Q (%) | disagreeing images | top-1 (%) | Q top-1 (%) | "
             "max abs logit diff | ms/image |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        for name, m in r["runtimes"].items():
            if "unavailable" in m:
                lines.append(f"| W{r['bits']}A{r['bits']} | {name} | {m['unavailable']} | | | | | |")
                continue
            lines.append(f"| W{r['bits']}A{r['bits']} | {name} | {m['agreement_with_q']:.2f} | {m['disagreements']} | "
                         f"{m['top1']:.2f} | {r['q_top1']:.2f} | {m['max_abs_logit_diff']:.3g} | "
                         f"{m['ms_per_image']:.3f} |")
    env = data["environment"]
    lines += ["", "`integer` is the `.adq` integer model (`adadfq_fast.deploy`), for comparison. Versions: "
              + ", ".join(f"{k} {v}" for k, v in env.items()) + ".",
              f"Regenerate: `{data['command']}`. Where QDQ cannot express Q exactly: docs/integer_design.md, "
              "\"ONNX export\"."]
    if data.get("note"):
        lines += ["", data["note"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--iters-per-epoch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None)
    p.add_argument("--work", default=None, help="folder for the quantize runs (default: a temp dir)")
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--note", default="", help="a line about the conditions of the run, copied into the results")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from adadfq_fast.data import make_loader

    work = args.work or tempfile.mkdtemp(prefix="onnx_agreement_")
    loader = make_loader("fashion-mnist", batch_size=500, root=args.data_root)
    results = []
    for bits in args.bits:
        ckpt = _quick_q(bits, args, work)
        results.append(measure(bits, ckpt, loader))
        print(json.dumps(results[-1]["runtimes"], indent=1))
    recipe = (f"adadfq-fast quantize --method adadfq --bits B --epochs {args.epochs} --warmup-epochs "
              f"{args.warmup_epochs} --iters-per-epoch {args.iters_per_epoch} --seed {args.seed}")
    given = list(argv if argv is not None else sys.argv[1:])
    if "--work" in given:  # a local cache of the quantize runs: not part of the recipe
        i = given.index("--work")
        del given[i:i + 2]
    data = {"command": " ".join(["python benchmarks/onnx_agreement.py"] + given),
            "q_recipe": recipe, "environment": _versions(), "results": results, "note": args.note}
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "onnx_agreement.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(args.results, "onnx_agreement.md"), "w") as f:
        f.write(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
