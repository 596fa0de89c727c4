"""Flow `train_refdsr`: train the reference branch, locally or data-parallel on Ray Train.

engine="local": one process (CPU or one GPU, rasr/research/train.py). engine="ray": Ray Train's
TorchTrainer with gradients averaged across workers (tasks/train.py). Both resume from
<out>/checkpoints/latest.json.
"""

from __future__ import annotations

import time

from prefect import get_run_logger

from flows._setup import flow, flow_setup
from flows._summary import publish_summary
from rasr import storage
from rasr.research.train import TrainConfig, Trainer, latest_checkpoint
from tasks.cluster import TrainScaling


@flow(name="train-refdsr")
def train_refdsr(config: TrainConfig, scaling: TrainScaling | None = None) -> dict:
    """Train RefDSR's reference branch on config.dataset; checkpoints (resumable) under config.out."""
    cfg, where = config, scaling or TrainScaling()
    flow_setup(cfg, where)
    log = get_run_logger()
    t0 = time.perf_counter()
    if not cfg.dataset or not cfg.out:
        raise ValueError("the training config needs `dataset` (made by `rasr dataset build`) and `out`")
    out, steps, engine = cfg.out, cfg.steps, where.engine
    before = latest_checkpoint(out)
    if before and before["step"] >= steps:
        log.info(f"already trained to step {before['step']}: nothing to do")
        return {"out": storage.redact(out), "step": before["step"], "branch": before["branch"], "resumed_from": before["step"],
                "history": [], "losses": None}
    if engine == "local":
        t = Trainer(cfg, device=where.device)
        t.resume()
        start = t.step
        history = t.run()
        losses = t.loss.config()
    elif engine == "ray":
        from tasks import train as ray_train

        start, history, losses = ray_train.fit(cfg, where, before)
    else:
        raise ValueError(f"unknown engine {engine!r}: choose local or ray")
    rec = latest_checkpoint(out)
    summary = {"out": storage.redact(out), "engine": engine, "workers": where.workers, "resumed_from": start,
               "step": rec["step"], "branch": storage.redact(rec["branch"]),
               "final_loss": history[-1]["total"] if history else None,
               "seconds": round(time.perf_counter() - t0, 2)}
    publish_summary("train-summary", {**summary, **{f"loss_{k}": v for k, v in (losses or {}).get("status", {}).items()}},
                    title=f"Training to step {rec['step']}")
    return {**summary, "branch": rec["branch"], "history": history, "losses": losses}
