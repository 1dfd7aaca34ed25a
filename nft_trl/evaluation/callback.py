"""`BenchmarkEvalCallback`: benchmark accuracy every N training steps, logged next to the training metrics.

Works with any `transformers.Trainer`, including TRL's `GRPOTrainer` and its subclasses such as `NFTTrainer`: it uses
only the `model` and `processing_class` the trainer hands to callbacks, samples with `transformers` generation on the
training weights, and scores with the training verifier.

>>> callback = BenchmarkEvalCallback(["aime24", "math500"], eval_steps=50, limit=30, n=4, max_tokens=1024)
>>> trainer = NFTTrainer(..., callbacks=[callback])  # doctest: +SKIP
>>> callback.attach(trainer)  # optional: put it first so that every logger sees its keys  # doctest: +SKIP

How the numbers reach the logs: `on_step_end` evaluates and asks the trainer to log this step
(`control.should_log = True`); `on_log` then adds the keys (`bench/<name>/avg@<n>`, `bench/<name>/pass@<n>`, the 95%
bootstrap interval of avg@n as `bench/<name>/ci_low` and `ci_high`, `bench/avg` with `bench/avg_ci_low` and
`bench/avg_ci_high`, `bench/eval_seconds`) to the `logs` dict being logged and to the matching `state.log_history`
entry. Forcing a log line at evaluation steps also closes GRPO's metric-averaging window there.
Callbacks run in order, so loggers registered before this callback (the default ones: console, TensorBoard, W&B...)
would not see the keys; `attach(trainer)` moves the callback to the front of the trainer's callback list.

Multi-process: only the global main process generates; the result is then broadcast with
`torch.distributed.broadcast_object_list`, which every rank enters at the same step, so other ranks wait and all ranks
log the same values (an error on the main process is re-raised on every rank instead of leaving them waiting). The
wait must fit in the process group's timeout. With weights sharded across ranks (FSDP, DeepSpeed ZeRO-3) a single rank
cannot run the model; this callback does not support that setting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback

from nft_trl.data import BOXED_INSTRUCTION

from .benchmarks import Benchmark, load_benchmark
from .generation import TransformersGenerator
from .runner import average_of, evaluate_benchmark, load_verifier, resolve_sampling, summarize


logger = logging.getLogger(__name__)

DEFAULT_EVAL_STEPS = 100
DEFAULT_LIMIT = 32
DEFAULT_CALLBACK_MAX_TOKENS = 1024
ERROR_KEY = "__error__"


class BenchmarkEvalCallback(TrainerCallback):
    """Evaluate a subset of math benchmarks every `eval_steps` optimizer steps and log the scores.

    Args:
        benchmarks: names or specs as for `nft-trl eval` (`aime24`, `name=path.jsonl`, ...).
        eval_steps: evaluate when `state.global_step` is a multiple of this.
        limit: first `limit` problems of each benchmark (`None`: all).
        n: samples per problem (overrides the preset's; default 1 keeps in-training evaluation cheap).
        preset: sampling preset for temperature and top_p (see `nft_trl.evaluation.PRESETS`).
        temperature, top_p, max_tokens: override the preset.
        seed: sampling seed; the same problems and seeds are used at every evaluation, so the curve compares like with
            like.
        eval_on_start: also evaluate before the first step (logged with the first training log).
        data_dir: folder of the benchmark files (default `$NFT_TRL_BENCHMARKS_DIR`).
        prompt_template, instruction: as for `nft-trl eval`.
        batch_size: problems per `generate` call.
        verifier: defaults to `nft_trl.rewards.verifier.math_verifier`, the training verifier.
        prefix: key prefix in the logs.
    """

    def __init__(
        self,
        benchmarks: Sequence[str],
        *,
        eval_steps: int = DEFAULT_EVAL_STEPS,
        limit: int | None = DEFAULT_LIMIT,
        n: int = 1,
        preset: str = "paper",
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = DEFAULT_CALLBACK_MAX_TOKENS,
        seed: int = 0,
        eval_on_start: bool = False,
        data_dir: str | Path | None = None,
        prompt_template: str = "chat",
        instruction: str = BOXED_INSTRUCTION,
        batch_size: int | None = None,
        verifier: Callable[..., list[float | None]] | None = None,
        prefix: str = "bench",
    ):
        if eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1, got {eval_steps}.")
        self.specs = list(benchmarks)
        self.eval_steps = eval_steps
        self.limit = limit
        self.eval_on_start = eval_on_start
        self.data_dir = data_dir
        self.prompt_template = prompt_template
        self.instruction = instruction
        self.batch_size = batch_size
        self.verifier = verifier
        self.prefix = prefix
        self.sampling_args = {
            "n": n,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "seed": seed,
        }
        self.preset = preset
        self._benchmarks: list[Benchmark] | None = None
        self._pending: dict[str, float] | None = None
        self.history: list[dict[str, float]] = []

    def attach(self, trainer) -> BenchmarkEvalCallback:
        """Register with `trainer` (if not yet) as its FIRST callback, so that every logger sees the benchmark keys."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        return self

    # ------------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, model, tokenizer, step: int) -> dict[str, float]:
        """Run the benchmarks on `model` now and return the log entries (no distributed logic)."""
        started = time.time()
        if self.verifier is None:
            self.verifier, _ = load_verifier()
        if self._benchmarks is None:
            self._benchmarks = [load_benchmark(s, data_dir=self.data_dir, limit=self.limit) for s in self.specs]
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor wraps its tokenizer
        generator = TransformersGenerator(model, tokenizer, batch_size=self.batch_size)
        logs, headline = {}, {}
        for benchmark in self._benchmarks:
            sampling = resolve_sampling(self.preset, benchmark.name, **self.sampling_args)
            records = evaluate_benchmark(
                generator,
                tokenizer,
                benchmark,
                sampling,
                verifier=self.verifier,
                prompt_template=self.prompt_template,
                instruction=self.instruction,
            )
            summary = summarize(benchmark.name, records, sampling, bootstrap_seed=sampling.seed)
            headline[benchmark.name] = summary["headline_values"]
            for key in (summary["headline"], f"pass@{sampling.n}"):
                if key in summary["metrics"]:
                    logs[f"{self.prefix}/{benchmark.name}/{key}"] = summary["metrics"][key]["value"]
            if summary["headline"] in summary["metrics"]:
                head = summary["metrics"][summary["headline"]]
                logs[f"{self.prefix}/{benchmark.name}/ci_low"] = head["ci_low"]
                logs[f"{self.prefix}/{benchmark.name}/ci_high"] = head["ci_high"]
        average = average_of(headline, seed=self.sampling_args["seed"])
        if average is not None:
            logs[f"{self.prefix}/avg"] = average["value"]
            logs[f"{self.prefix}/avg_ci_low"] = average["ci_low"]
            logs[f"{self.prefix}/avg_ci_high"] = average["ci_high"]
        logs[f"{self.prefix}/eval_seconds"] = time.time() - started
        logger.info("Benchmark evaluation at step %d: %s", step, logs)
        return logs

    def _run_on_main_and_share(self, state, model, tokenizer) -> None:
        logs = None
        if state.is_world_process_zero:
            try:
                logs = self.evaluate(model, tokenizer, state.global_step)
            except Exception as error:  # re-raised below on every rank, after the broadcast releases them
                logger.exception("Benchmark evaluation failed at step %d.", state.global_step)
                logs = {ERROR_KEY: repr(error)}
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            box = [logs]
            dist.broadcast_object_list(box, src=0)
            logs = box[0]
        if logs is None:  # a non-zero rank without a process group cannot know the result; log nothing
            return
        if ERROR_KEY in logs:
            raise RuntimeError(f"Benchmark evaluation failed on the main process: {logs[ERROR_KEY]}")
        self.history.append({"step": state.global_step, **logs})
        self._pending = {**(self._pending or {}), **logs}

    # -------------------------------------------------------------------------------------------------- callbacks
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.eval_on_start:
            self._run_on_main_and_share(state, model, processing_class)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.eval_steps == 0:
            self._run_on_main_and_share(state, model, processing_class)
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending or logs is None:
            return
        logs.update(self._pending)
        # Trainer.log appended a copy of `logs` to the history just before calling us: complete that entry too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)
        self._pending = None
