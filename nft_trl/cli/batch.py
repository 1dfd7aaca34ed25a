"""The batch arithmetic of a launch: what divides what, each problem with flag values that work, and the run's length.

TRL's launcher builds `GRPOConfig` in the launching process, where the world size is 1, so batch sizes are validated
for the wrong process count; `batch_problems` checks them for the launch's real process count and names, for each
inconsistency, flags that work together. `Arithmetic` is the effective arithmetic in TRL's and verl's terms, and
`warmup_warning` says when the learning-rate warm-up takes up much (or all) of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


#: Schedulers that ignore `warmup_steps` (transformers' `get_scheduler`).
SCHEDULERS_WITHOUT_WARMUP = ("constant", "reduce_lr_on_plateau", "greedy")
#: A warm-up longer than this share of the run is reported.
WARMUP_SHARE_WARNING = 0.25


def batch_problems(args: Any, num_processes: int) -> list[str]:
    """Inconsistent batch settings for `num_processes`, each with flag values that fix it. Reads the values as given
    (before `GRPOConfig.__post_init__` derives `generation_batch_size` / `steps_per_generation`)."""
    per_device, ga, k = args.per_device_train_batch_size, args.gradient_accumulation_steps, args.num_generations
    spg, gbs = args.steps_per_generation, args.generation_batch_size
    global_micro = per_device * num_processes
    if k < 2:
        return [
            f"num_generations={k}: NFT needs at least 2 answers per question to tell correct from wrong ones "
            "(the paper uses 16). Set num_generations >= 2 (e.g. --num_generations 8)."
        ]
    if spg is not None and gbs is not None:
        return [
            f"generation_batch_size ({gbs}) and steps_per_generation ({spg}) are both set; they say the same thing "
            f"(generation_batch_size = per_device_train_batch_size x processes x steps_per_generation). Remove "
            "generation_batch_size and keep steps_per_generation."
        ]
    if gbs is not None:
        if gbs % global_micro:
            wanted = max(1, round(gbs / global_micro))
            return [
                f"generation_batch_size ({gbs}) is not a multiple of per_device_train_batch_size x processes "
                f"({per_device} x {num_processes} = {global_micro}). Remove generation_batch_size and use "
                f"steps_per_generation. {_working_values(per_device, num_processes, ga, wanted, k)}"
            ]
        spg = gbs // global_micro
    elif spg is None:
        spg = ga
    problems = []
    reasons = []
    if (global_micro * spg) % k:
        reasons.append(
            f"answers per generation step ({per_device} x {num_processes} processes x {spg} steps_per_generation = "
            f"{global_micro * spg}) is not a multiple of num_generations ({k}), so a question's answers would be "
            "split across generation steps"
        )
    if spg % ga:
        reasons.append(
            f"steps_per_generation ({spg}) is not a multiple of gradient_accumulation_steps ({ga}): an optimizer "
            "step would mix answers from two generation steps"
        )
    if reasons:
        problems.append("; ".join(reasons) + ". " + _working_values(per_device, num_processes, ga, spg, k))
    if getattr(args, "do_eval", False) and str(args.eval_strategy) not in ("no", "IntervalStrategy.NO"):
        k_eval = args.num_generations_eval or k
        eval_batch = args.per_device_eval_batch_size * num_processes
        if eval_batch % k_eval:
            step = k_eval // math.gcd(num_processes, k_eval)
            problems.append(
                f"the global eval batch ({args.per_device_eval_batch_size} x {num_processes} processes = {eval_batch}) "
                f"is not a multiple of num_generations_eval ({k_eval}). Set per_device_eval_batch_size to a multiple "
                f"of {step} (e.g. --per_device_eval_batch_size {_round_up(args.per_device_eval_batch_size, step)})."
            )
    return problems


def _working_values(per_device: int, num_processes: int, ga: int, spg: int, k: int) -> str:
    """Flag values that satisfy every batch rule, changing `steps_per_generation` first (the others set memory and
    the optimizer step), then the alternatives that keep it."""
    micro = per_device * num_processes
    whole_groups = k // math.gcd(micro, k)  # steps_per_generation must be a multiple of this for whole groups
    multiple = math.lcm(ga, whole_groups)
    fixed = _round_up(spg, multiple)
    answers = micro * fixed
    text = (
        f"Set steps_per_generation to a multiple of {multiple} (e.g. {fixed}): --steps_per_generation {fixed} works "
        f"with --per_device_train_batch_size {per_device} --gradient_accumulation_steps {ga} --num_generations {k} "
        f"on {_processes(num_processes)} ({answers} answers per generation step = {_questions(answers // k)} x {k})."
    )
    if (micro * spg) % k == 0 and spg % ga:
        divisor = max(d for d in range(1, ga + 1) if spg % d == 0)
        text += f" Or keep steps_per_generation {spg} with --gradient_accumulation_steps {divisor}."
    elif (micro * spg) % k and spg % ga == 0:
        step = k // math.gcd(num_processes * spg, k)
        text += (
            f" Or keep steps_per_generation {spg} with --per_device_train_batch_size {_round_up(per_device, step)}."
        )
    return text


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


def _questions(n: int) -> str:
    return "1 question" if n == 1 else f"{n} questions"


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


@dataclass
class Arithmetic:
    """The effective batch arithmetic of a parsed config for a launch, in TRL's and in verl's terms."""

    num_processes: int
    per_device: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    num_generations: int
    num_iterations: int
    max_prompt_length: int | None
    max_completion_length: int
    max_steps: int

    @property
    def answers_per_generation(self) -> int:
        return self.per_device * self.num_processes * self.steps_per_generation

    @property
    def questions_per_generation(self) -> int:
        return self.answers_per_generation // self.num_generations

    @property
    def answers_per_optimizer_step(self) -> int:
        return self.per_device * self.num_processes * self.gradient_accumulation_steps

    @property
    def optimizer_steps_per_generation(self) -> float:
        return self.steps_per_generation * self.num_iterations / self.gradient_accumulation_steps

    @property
    def on_policy(self) -> bool:
        return self.optimizer_steps_per_generation <= 1

    @property
    def sequence_length(self) -> int:
        return (self.max_prompt_length or 0) + self.max_completion_length

    def lines(self) -> list[str]:
        k, opt = self.num_generations, self.optimizer_steps_per_generation
        seq = self.sequence_length
        prompt_note = "" if self.max_prompt_length else " (no max_prompt_length: answers only)"
        policy = (
            "on-policy (one optimizer step per generated batch: ratio R = 1, NFT's gradient equals Dr. GRPO's)"
            if self.on_policy
            else f"off-policy ({opt:g} optimizer steps per generated batch: ratio R != 1 after the first; the paper: 16)"
        )
        lines = [
            f"questions per generation step      {self.questions_per_generation:>10,}   (verl: data.train_batch_size)",
            f"answers per question               {k:>10,}   (num_generations; verl: rollout.n)",
            f"answers per generation step        {self.answers_per_generation:>10,}   (= per_device_train_batch_size "
            f"{self.per_device} x {self.num_processes} processes x steps_per_generation {self.steps_per_generation})",
            f"answers per optimizer step         {self.answers_per_optimizer_step:>10,}   (= {self.per_device} x "
            f"{self.num_processes} x gradient_accumulation_steps {self.gradient_accumulation_steps}; "
            f"{self.answers_per_optimizer_step / k:g} questions; verl: ppo_mini_batch_size)",
            f"optimizer steps per generation     {opt:>10g}   {policy}",
            f"tokens per micro-batch per GPU  <= {self.per_device * seq:>10,}   (per_device_train_batch_size x "
            f"(max_prompt_length + max_completion_length = {seq}){prompt_note})",
            f"tokens per optimizer step       <= {self.answers_per_optimizer_step * seq:>10,}",
            f"tokens per generation step      <= {self.answers_per_generation * seq:>10,}",
        ]
        if self.max_steps > 0:
            generations = self.max_steps / opt
            lines.append(
                f"generation steps in max_steps={self.max_steps:,}: {generations:g} "
                f"({generations * self.questions_per_generation:,.0f} questions drawn)"
            )
        return lines


def arithmetic(training_args: Any, num_processes: int, max_prompt_length: int | None) -> Arithmetic:
    return Arithmetic(
        num_processes=num_processes,
        per_device=training_args.per_device_train_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        steps_per_generation=training_args.steps_per_generation,
        num_generations=training_args.num_generations,
        num_iterations=training_args.num_iterations,
        max_prompt_length=max_prompt_length,
        max_completion_length=training_args.max_completion_length,
        max_steps=training_args.max_steps,
    )


def planned_steps(training_args: Any, num_processes: int, num_questions: int | None = None) -> int | None:
    """The optimizer steps of the run: `max_steps`, else computed from the epochs when the number of training
    questions is known (`None` otherwise)."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    if num_questions is None:
        return None
    arith = arithmetic(training_args, num_processes, None)
    questions = arith.questions_per_generation
    if questions == 0:
        return None
    # TRL's sampler draws whole generation batches; each question's answers are used num_iterations times.
    answers = (num_questions // questions) * questions * arith.num_generations * arith.num_iterations
    steps_per_epoch = max(-(-answers // arith.answers_per_optimizer_step), 1)  # the Trainer rounds up
    return math.ceil(training_args.num_train_epochs * steps_per_epoch)


def warmup_warning(training_args: Any, total_steps: int | None) -> str | None:
    """A message when the learning-rate warm-up lasts the whole run (the rate stays ~0) or a large share of it."""
    scheduler = getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)
    if not total_steps or total_steps <= 0 or scheduler in SCHEDULERS_WITHOUT_WARMUP:
        return None
    warmup = training_args.get_warmup_steps(total_steps)
    if warmup <= 0:
        return None
    lr = training_args.learning_rate
    run = f"run ({total_steps:,} optimizer steps)"
    if warmup >= total_steps:
        # The scheduler's factor at optimizer step s (from 0) is s / warmup during the warm-up.
        last = lr * (total_steps - 1) / warmup
        return (
            f"the learning-rate warm-up ({warmup:,} steps, {scheduler}) covers the whole {run}: the learning rate "
            f"will be ~0 for the run (0 at the first step, {last:.2g} at the last, against learning_rate {lr:g}), so "
            f"training will hardly change the model. Set --warmup_steps 0"
            + (f" (or at most {total_steps // 10:,}, 10% of the run)." if total_steps >= 20 else ".")
        )
    if warmup / total_steps >= WARMUP_SHARE_WARNING:
        return (
            f"the learning-rate warm-up ({warmup:,} steps, {scheduler}) is {warmup / total_steps:.0%} of the {run}: "
            f"the learning rate stays below learning_rate {lr:g} for that part. Lower --warmup_steps (e.g. "
            f"{max(1, total_steps // 20):,}, 5% of the run) if that is not intended."
        )
    return None
