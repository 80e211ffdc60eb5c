"""Why peftlab's SmolLM2 training loss goes NaN on CUDA (bench/gpu.py, 2026-12-04) and the Trainer's does not.

Usage: python bench/gpu_nan_probe.py [--data-dir .gpudata] [--out runs/bench_gpu/nan_probe.json]
                                     [--examples 512] [--variants default,fp32,...] [--deadline-s 100]
                                     [--poison-step N] [--tiny]

A random-weight SmolLM2-135M (its real config, built as bench/gpu.py builds it) is fully fine-tuned
(lr 1e-5, bench/gpu.py's SmolLM2 rate) on the first ``--examples`` MultiNLI pairs of ``--data-dir``,
one epoch, batch 32, in variants:

* ``run_experiment``: peftlab's real path, untouched (it reports only ok / NaN and the train loss);
* ``default``: a loop written here from peftlab's own pieces that mirrors ``runners/train._fit`` on
  CUDA (left padding, ``pad_to_multiple_of=8``, sdpa, bf16 autocast, fused AdamW, accelerate's
  grad clipping, LengthGroupedBatches), recording every step;
* each other variant changes ONE thing of ``default`` (see VARIANTS).

Per step: the loss, the gradient norm before clipping, max |activation| of the last decoder layer
(real and pad positions apart) and of the final hidden state, the batch's fully masked query rows
(positions attending to no key), and whether every gradient and weight is finite. Per variant: the
first step at which the loss, a gradient or a weight is non-finite (or "finite"); at a NaN loss
also the first module whose output was non-finite, whether the weights were still finite, and the
same batch replayed without grad (same settings, fp32, eager attention, leading all-pad columns
cut); at the first non-finite gradient (loss still finite) the module whose output gradient went
non-finite first and the batch replayed with backward in those settings. Every variant stops at a
non-finite loss, as ``_fit`` does; ``pad_embedding_norm`` records that the random model's pad token
(EOS, its config's pad_token_id) has a zero embedding row (``padding_idx``), so pad positions enter
the first RMSNorm as zero vectors. ``--poison-step N`` (a check of this script) makes the last
parameter's gradient NaN at step N, to run those paths on a CPU.

Since peftlab.backbones.masks (2026-12-06), ``default`` and ``run_experiment`` give no query row an
empty attention row; ``sdpa_masks*`` put transformers' own masks back (the run of 2026-12-04), alone,
without cuDNN attention, and without padding to a multiple of 8 (cuDNN's backward NaN at lengths of
64 modulo 128, pytorch/pytorch#196678): if the fix is right, ``default`` is finite and
``sdpa_masks`` is not.

Device: ``GPU_PROBE=1 bash bench/gpu_device.sh`` (its wheels and set-up, then this script alone).

Each variant is guarded (a failure is recorded, the others go on); no variant starts after
``--deadline-s``; the JSON is rewritten after each. ``--tiny`` (automatic without CUDA): the
shrunk model of bench/gpu.py and few pairs, to check the script end to end on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchkit  # noqa: F401  (this checkout's peftlab first on sys.path)
import gpu
import numpy as np
import torch
import train_throughput as tt

ROOT = Path(__file__).resolve().parents[1]
SUB = "smollm2"
#: peftlab's CUDA path (runners/experiment.py, runners/train.py) as the loop's settings
DEFAULT: dict[str, Any] = {"pad_multiple": 8, "padding_side": "left", "attn": None, "precision": "bf16",
                           "fused": True, "clip": True, "order": "peftlab", "masks": "peftlab", "cudnn": True}
#: variant -> what it changes of DEFAULT (one thing each)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no_pad_multiple": {"pad_multiple": None},
    "right_padding": {"padding_side": "right"},
    "eager_attention": {"attn": "eager"},
    "fp32": {"precision": "no"},
    "adamw_unfused": {"fused": False},
    "no_clip": {"clip": False},
    "trainer_order": {"order": "trainer"},
    "shuffled_order": {"order": "shuffled"},
    # peftlab.backbones.masks off: transformers' own sdpa masks, whose left pads' rows attend to
    # nothing (what bench/gpu.py ran on 2026-12-04, before that module)
    "sdpa_masks": {"masks": "sdpa"},
    "sdpa_masks_no_cudnn": {"masks": "sdpa", "cudnn": False},
    "sdpa_masks_no_pad_multiple": {"masks": "sdpa", "pad_multiple": None},
}
ALL = ("run_experiment", *VARIANTS)


# --- pure helpers (tests/test_bench_gpu.py) ---------------------------------------------------------

def masked_queries(attention_mask: Any, causal: bool = True) -> dict[str, int]:
    """Query positions of a padded batch that attend to no key (a fully masked attention row).

    Causal: position i of a row sees keys 0..i, so every position before the row's first real token
    is fully masked (left padding's leading pads). Bidirectional: only a row with no real token.
    Returns the count of such positions, of rows having any, and the batch's rows."""
    m = np.asarray(attention_mask).astype(bool)
    rows, width = m.shape
    if causal:
        first = np.where(m.any(1), m.argmax(1), width)  # index of the first real token per row
        return {"positions": int(first.sum()), "rows": int((first > 0).sum()), "batch_rows": rows}
    empty = ~m.any(1)
    return {"positions": int(empty.sum() * width), "rows": int(empty.sum()), "batch_rows": rows}


def trainer_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """The transformers Trainer's ``group_by_length`` order (its LengthGroupedSampler's indices, drawn
    from a generator seeded with ``seed``) cut into batches, as its DataLoader cuts them."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def first_step(steps: list[dict[str, Any]], key: str) -> int | None:
    """The first step whose ``key`` is False (a finiteness flag) or a non-finite number; None if none."""
    for s in steps:
        v = s.get(key)
        if v is False or (isinstance(v, float) and not math.isfinite(v)):
            return s["step"]
    return None


def summary(entry: dict[str, Any]) -> str:
    """One table cell: where a variant first went non-finite, or that it stayed finite."""
    if entry.get("error"):
        return "ERROR " + entry["error"].split(" | ")[0][:60]
    if entry.get("skipped"):
        return "skipped: " + entry["skipped"]
    first = entry.get("first_nonfinite") or {}
    hits = [f"{k}@{v}" for k, v in first.items() if v is not None]
    return ("non-finite " + " ".join(hits)) if hits else f"finite ({entry.get('steps_run', '?')} steps)"


# --- the loop ---------------------------------------------------------------------------------------

class FixedBatches:
    """A batch sampler over given batches (the Trainer's order); ``batch_size`` for accelerate."""

    def __init__(self, batches: list[list[int]], batch_size: int) -> None:
        self.order, self.batch_size = batches, batch_size

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Any:
        return iter(self.order)


class Watch:
    """Forward hooks: per step, which modules' outputs were finite (kept as tensors, read only at a
    NaN) and max |activation| of the last decoder layer (real / pad positions) and the final state."""

    def __init__(self, model: torch.nn.Module) -> None:
        base = model.base_model
        layers = next(m for _, m in base.named_modules() if isinstance(m, torch.nn.ModuleList))
        self.finite: list[tuple[str, torch.Tensor]] = []
        self.grad_finite: list[tuple[str, torch.Tensor]] = []
        self.mask: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor] = {}
        self.handles = [base.register_forward_hook(self._final)]
        self.handles.append(layers[-1].register_forward_hook(self._last_layer))
        for name, mod in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if name and (leaf in ("embed_tokens", "self_attn", "attention", "mlp", "norm", "score", "classifier")
                         or (leaf.isdigit() and name.rsplit(".", 1)[0].endswith("layers"))):
                self.handles.append(mod.register_forward_hook(self._check(name)))

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor | None:
        out = getattr(out, "last_hidden_state", out)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out if isinstance(out, torch.Tensor) and out.is_floating_point() else None

    def _check(self, name: str) -> Any:
        def hook(_m: Any, _i: Any, out: Any) -> None:
            t = self._tensor(out)
            if t is not None:
                self.finite.append((name, torch.isfinite(t).all()))
                if t.requires_grad:  # the gradient of this output, in backward order
                    t.register_hook(self._check_grad(name))
        return hook

    def _check_grad(self, name: str) -> Any:
        def hook(g: torch.Tensor) -> None:
            self.grad_finite.append((name, torch.isfinite(g).all()))
        return hook

    def _last_layer(self, _m: Any, _i: Any, out: Any) -> None:
        t = self._tensor(out)
        if t is None or self.mask is None or t.shape[:2] != self.mask.shape:  # (a replay of a cut batch)
            return
        a = t.detach().float().abs().amax(-1)  # (batch, positions)
        real = self.mask.to(a.device).bool()
        self.stats["act_last_layer_real"] = torch.where(real, a, 0).amax()
        self.stats["act_last_layer_pad"] = torch.where(~real, a, 0).amax()
        self.stats["nonfinite_last_layer_real"] = (~torch.isfinite(t.detach()).all(-1) & real).sum()
        self.stats["nonfinite_last_layer_pad"] = (~torch.isfinite(t.detach()).all(-1) & ~real).sum()

    def _final(self, _m: Any, _i: Any, out: Any) -> None:
        t = self._tensor(out)
        if t is not None:
            self.stats["act_final"] = t.detach().float().abs().amax()

    def start(self, mask: torch.Tensor) -> None:
        self.finite, self.grad_finite, self.stats, self.mask = [], [], {}, mask

    def read(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.stats.items()}

    def first_nonfinite_module(self) -> str | None:
        """The first module (in forward order) whose output was non-finite."""
        return next((n for n, ok in self.finite if not bool(ok)), None)

    def first_nonfinite_grad(self) -> str | None:
        """The first module (in backward order) the gradient of whose output was non-finite: the NaN
        arose in the backward of what consumes that output."""
        return next((n for n, ok in self.grad_finite if not bool(ok)), None)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def all_finite(tensors: list[torch.Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


class Probe:
    """What every variant shares: the model folder, the config, the task and its encodings."""

    def __init__(self, args: argparse.Namespace, folder: Path, work: Path) -> None:
        from peftlab.backbones.loaders import load_tokenizer
        from peftlab.config import BackboneConfig
        from peftlab.runners.batching import encode
        from peftlab.tasks import load_task

        self.args, self.folder, self.work = args, folder, work
        self.device = "cuda" if gpu.cuda() else "cpu"
        self.params = gpu.method_params("llama", "full")
        threads = 1 if self.device == "cpu" else None
        self.cfg = tt.config("full", args.examples, args.eval_examples, work / "runs", threads, backbone=str(folder),
                             data=args.data_dir / "mnli", params=self.params, device=self.device)
        self.bb = BackboneConfig(name=str(folder))
        self.data = load_task(self.cfg.task, self.cfg.train.seed)
        self.train = encode(load_tokenizer(self.bb), self.data.train, self.cfg.train.max_length)

    def run_experiment(self) -> dict[str, Any]:
        """peftlab's own path on the same config: ok or NaN (no per-step record from outside it)."""
        from peftlab.runners.experiment import run_experiment

        r = run_experiment(self.cfg, quiet=True, resume="fresh")[-1]
        return {"status": r.status, "run_error": r.error, "flags": r.flags, "precision": r.precision,
                "steps_run": "all",
                "train_loss": r.epochs[-1].train_loss if r.epochs else None,
                "first_nonfinite": {"loss": "epoch 1" if "nan_loss" in (r.flags or []) else None}}

    def loop(self, change: dict[str, Any]) -> dict[str, Any]:
        """peftlab's ``_fit`` on CUDA, step by step, with ``change`` applied to DEFAULT."""
        from torch.utils.data import DataLoader
        from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup, set_seed

        from peftlab.backbones import masks
        from peftlab.backbones.loaders import load_classifier, load_tokenizer, method_load_kwargs
        from peftlab.methods import METHODS
        from peftlab.estimate.params import arch_spec
        from peftlab.runners.batching import LengthGroupedBatches
        from peftlab.runners.train import device_type, make_accelerator, make_optimizer, param_groups, train_precision

        v = {**DEFAULT, **change}
        cfg, params = self.cfg, self.cfg.methods[0]
        method = METHODS.get(params.method)
        set_seed(cfg.train.seed)  # as runners/experiment._run_method, in its order
        tcfg = cfg.train.model_copy(update={"mixed_precision": v["precision"],
                                            "group_by_length": v["order"] != "shuffled"})
        precision = train_precision(tcfg, None, method.keeps_fp32(params, device_type(tcfg)))
        acc = make_accelerator(tcfg, precision)
        tok = load_tokenizer(self.bb)
        tok.padding_side = v["padding_side"]
        collate = DataCollatorWithPadding(tok, pad_to_multiple_of=v["pad_multiple"])
        extra = {**method_load_kwargs(self.bb, method, params, self.data.num_labels),
                 **({"attn_implementation": v["attn"]} if v["attn"] else {})}
        model = load_classifier(self.bb, self.data.label_names, tok, extra)
        if v["masks"] == "sdpa":
            for c in masks.configs(model, (masks.NAME,)):
                c._attn_implementation = masks.BASE
        if torch.cuda.is_available():
            torch.backends.cuda.enable_cudnn_sdp(v["cudnn"])
        model = method.prepare(model, params, arch_spec(model.config))
        bs = tcfg.batch_size
        lengths = self.train.lengths
        sampler: Any = (FixedBatches(trainer_batches(lengths, bs, tcfg.seed), bs) if v["order"] == "trainer"
                        else LengthGroupedBatches(lengths, bs, tcfg.seed, tcfg.group_by_length))
        loader = DataLoader(self.train, batch_sampler=sampler, collate_fn=collate)
        steps = len(sampler)
        if v["fused"]:
            opt, sched = make_optimizer(model, params.lr, tcfg, steps)
        else:  # torch's default (foreach) AdamW, the Trainer's
            opt = torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=params.lr, fused=False)
            sched = get_linear_schedule_with_warmup(opt, int(tcfg.warmup_ratio * steps), steps)
        wrapped, opt, loader, sched = acc.prepare(model, opt, loader, sched)
        trainable = [p for p in wrapped.parameters() if p.requires_grad]
        names = {id(p): n for n, p in model.named_parameters()}
        watch = Watch(model)
        now = {"step": 0}
        if self.args.poison_step:  # a check of the NaN paths: a NaN gradient at that step
            trainable[-1].register_hook(lambda g: g * float("nan") if now["step"] == self.args.poison_step else g)
        pad_row = model.get_input_embeddings().weight[tok.pad_token_id]
        out: dict[str, Any] = {"settings": v, "precision": precision.dtype, "attn": model.config._attn_implementation,
                               "pad_token_id": tok.pad_token_id, "pad_embedding_norm": float(pad_row.norm()),
                               "fused": bool(opt.param_groups[0].get("fused")), "steps": []}
        wrapped.train()
        try:
            for i, batch in enumerate(loader):
                now["step"] = i + 1
                mask = batch["attention_mask"]
                watch.start(mask)
                real = mask.sum(1)
                rec: dict[str, Any] = {"step": i + 1, "padded_len": int(mask.shape[1]), "real_len_max": int(real.max()),
                                       "real_len_min": int(real.min()), "lr": sched.get_last_lr()[0],
                                       "masked_queries": masked_queries(mask.cpu().numpy())}
                weights_ok = all_finite([p.detach() for p in trainable])
                with acc.accumulate(wrapped):
                    loss = wrapped(**batch).loss
                    rec.update(loss=float(loss.detach()), **watch.read())
                    if not math.isfinite(rec["loss"]):
                        rec.update(weights_finite_before=weights_ok,
                                   first_nonfinite_module=watch.first_nonfinite_module())
                        rec["replay"] = self.replay(model, batch, [])  # after: its forwards feed the watch too
                        out["steps"].append(rec)
                        break
                    acc.backward(loss)
                    grads = [p.grad for p in trainable if p.grad is not None]
                    rec["grads_finite"] = all_finite(grads)
                    if not rec["grads_finite"]:
                        bad = [names.get(id(p), "?") for p in trainable
                               if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
                        rec.update(nonfinite_grads=bad[:8], nonfinite_grad_count=len(bad),
                                   first_nonfinite_output_grad=watch.first_nonfinite_grad())
                        if first_step(out["steps"], "grads_finite") is None:  # the first such step only
                            rec["replay"] = self.replay(model, batch, trainable)
                    if v["clip"]:
                        rec["grad_norm"] = float(acc.clip_grad_norm_(trainable, tcfg.max_grad_norm))
                    else:
                        rec["grad_norm"] = float(torch.nn.utils.get_total_norm(grads))
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                rec["weights_finite"] = all_finite([p.detach() for p in trainable])
                out["steps"].append(rec)
        finally:
            watch.close()
            if torch.cuda.is_available():
                torch.backends.cuda.enable_cudnn_sdp(True)
        s = out["steps"]
        out["steps_run"], out["steps_planned"] = len(s), steps
        out["first_nonfinite"] = {"loss": first_step(s, "loss"), "grad": first_step(s, "grads_finite"),
                                  "grad_norm": first_step(s, "grad_norm"), "weight": first_step(s, "weights_finite")}
        out["max_act_last_layer_real"] = max((r.get("act_last_layer_real", 0.0) for r in s), default=None)
        return out

    def replay(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
               trainable: list[torch.Tensor]) -> dict[str, Any]:
        """The failing batch again on the same (pre-step) weights: as trained, in fp32 (accelerate's
        autocast-wrapped forward swapped for the original), with eager attention, and with the leading
        columns that are padding in every row (pad_to_multiple_of's) cut off. Without ``trainable``
        (a NaN loss): forward only, each try's loss. With it (a non-finite gradient): forward and
        backward, each try's loss and whether every gradient was finite; the as-trained try runs last
        again so the step goes on with its own gradients."""
        mask = batch["attention_mask"]
        cut = int((mask.cumsum(1) > 0).any(0).float().argmax())
        short = {k: t[:, cut:] if t.dim() == 2 else t for k, t in batch.items()}
        res: dict[str, Any] = {"all_pad_columns": cut}
        attn, forward = model.config._attn_implementation, model.forward

        def attempt(b: dict[str, torch.Tensor]) -> Any:
            if not trainable:
                with torch.no_grad():
                    return float(model(**b).loss)
            for p in trainable:
                p.grad = None
            loss = model(**b).loss
            if not torch.isfinite(loss):
                return {"loss": float(loss)}
            loss.backward()
            return {"loss": float(loss), "grads_finite": all_finite([p.grad for p in trainable if p.grad is not None])}

        tries = [("same", batch), ("fp32", batch), ("eager", batch), ("no_all_pad_columns", short)]
        for name, b in tries + ([("restore", batch)] if trainable else []):
            try:
                if name == "fp32":
                    model.forward = getattr(model, "_original_forward", forward)
                if name == "eager":
                    model.set_attn_implementation("eager")
                res[name] = attempt(b)
            except Exception as exc:  # noqa: BLE001 - a replay that cannot run says so
                res[name] = gpu.error_text(exc)[:200]
            finally:
                model.forward = forward
                if model.config._attn_implementation != attn:
                    model.set_attn_implementation(attn)
        res.pop("restore", None)
        return res


# --- main -------------------------------------------------------------------------------------------

def table(res: dict[str, Any]) -> str:
    lines = [f"{'variant':<16} {'result':<44} {'max|act| last layer':>19} {'last loss':>10} {'grad norm max':>14}"]
    for name, e in res["variants"].items():
        steps = e.get("steps") or []
        losses = [r["loss"] for r in steps if "loss" in r]
        norms = [r["grad_norm"] for r in steps if isinstance(r.get("grad_norm"), float)]
        act = e.get("max_act_last_layer_real")
        last = losses[-1] if losses else e.get("train_loss")
        lines.append(f"{name:<16} {summary(e):<44} {'-' if act is None else f'{act:.3g}':>19} "
                     f"{'-' if last is None else f'{last:.4g}':>10} {f'{max(norms):.3g}' if norms else '-':>14}")
        for r in steps:
            if "first_nonfinite_output_grad" in r and "replay" in r:
                lines.append(f"{'':<16}   grads non-finite at step {r['step']} ({r['nonfinite_grad_count']} tensors), "
                             f"loss "
                             f"{r['loss']:.4g}; first non-finite output grad {r['first_nonfinite_output_grad']}; "
                             f"replay {r['replay']}")
            if "weights_finite_before" in r:
                lines.append(f"{'':<16}   loss non-finite at step {r['step']}: weights finite before "
                             f"{r['weights_finite_before']}, first non-finite module {r['first_nonfinite_module']}; "
                             f"replay {r['replay']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT / ".gpudata")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_gpu" / "nan_probe.json")
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--eval-examples", type=int, default=64, help="run_experiment evaluates after training")
    ap.add_argument("--variants", default=",".join(ALL), help=f"of {','.join(ALL)}")
    ap.add_argument("--deadline-s", type=float, default=100, help="no variant starts after this many seconds")
    ap.add_argument("--poison-step", type=int, default=0,
                    help="a check of this script: make the loop variants' gradients NaN at this step")
    ap.add_argument("--tiny", action="store_true", help="bench/gpu.py's tiny model, few pairs (automatic without CUDA)")
    args = ap.parse_args()
    args.tiny = args.tiny or not gpu.cuda()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.tiny:
        args.examples, args.eval_examples = min(args.examples, 96), 8
        torch.set_num_threads(1)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in ALL]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {','.join(ALL)}")
    t0 = time.perf_counter()
    res: dict[str, Any] = {"command": "python bench/gpu_nan_probe.py " + " ".join(sys.argv[1:]),
                           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                           "default": DEFAULT, "env": gpu.environment(args.tiny), "variants": {}}
    print(json.dumps(res["env"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        res["seconds"] = round(time.perf_counter() - t0, 1)
        args.out.write_text(json.dumps(res, indent=2, default=str), encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="nan_probe.") as tmp:
        work = Path(tmp)
        try:
            folder = gpu.build_models(args.data_dir, work, args.tiny, (SUB,))[SUB]
            probe = Probe(args, folder, work)
        except Exception as exc:  # noqa: BLE001 - nothing to probe without the model and data
            res["error"] = gpu.error_text(exc)
            save()
            print(f"setup FAILED: {res['error']}", file=sys.stderr)
            return 1
        res["setup_s"] = round(time.perf_counter() - t0, 1)
        for name in names:
            if time.perf_counter() - t0 > args.deadline_s:
                res["variants"][name] = {"skipped": f"past --deadline-s {args.deadline_s:g}"}
                continue
            t = time.perf_counter()
            try:
                entry = probe.run_experiment() if name == "run_experiment" else probe.loop(VARIANTS[name])
            except Exception as exc:  # noqa: BLE001 - one failing variant must not cost the others
                entry = {"error": gpu.error_text(exc)}
            gpu.held()  # the variant's model and optimizer state freed before the next
            entry["seconds"] = round(time.perf_counter() - t, 1)
            res["variants"][name] = entry
            print(f"{name}: {summary(entry)} ({entry['seconds']} s)", flush=True)
            save()
    save()
    print(table(res))
    print(f"wrote {args.out} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
