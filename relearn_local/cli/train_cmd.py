"""``relearn-local train`` and ``inject``: options, config assembly, and rendering of the plan and result.

Options are generated from the stage configs, so help text, defaults and
allowed values live in one place (``relearn_local.train.config``, which
imports neither torch nor transformers).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable

import click

from ..train.config import InjectConfig, TrainConfig
from .common import config_option, given_options

TRAIN_EPILOG = """
\b
Examples:
  relearn-local train --augmented runs/aug --retain examples/retain.json --out runs/train
  relearn-local train --augmented runs/aug --retain examples/retain.json --out runs/train --dry-run
  relearn-local train --augmented runs/aug --retain examples/retain.json --out runs/train --resume
  relearn-local train --method npo --forget examples/forget.json --retain examples/retain.json --out runs/npo
  relearn-local train --base runs/inject/model --augmented runs/aug --retain examples/retain.json --out runs/t2
"""

INJECT_EPILOG = """
\b
Examples:
  relearn-local inject --data examples/forget.json --data examples/retain.json --out runs/inject
  relearn-local inject --data facts.jsonl --epochs 5 --out runs/inject --dry-run
  relearn-local train --base runs/inject/model --augmented runs/aug --retain examples/retain.json --out runs/t
"""

# Options shared by both commands, in help order: (config field, flag).
COMMON_FIELDS = [
    ("base", "--base"), ("out", "--out"), ("backend", "--backend"), ("dtype", "--dtype"),
    ("quantization", "--quantization"), ("learning_rate", "--learning-rate"), ("epochs", "--epochs"),
    ("batch_size", "--batch-size"), ("gradient_accumulation", "--gradient-accumulation"),
    ("max_length", "--max-length"), ("lora_rank", "--lora-rank"), ("lora_alpha", "--lora-alpha"),
    ("lora_dropout", "--lora-dropout"), ("weight_decay", "--weight-decay"), ("warmup_steps", "--warmup-steps"),
    ("max_grad_norm", "--max-grad-norm"), ("max_steps", "--max-steps"),
    ("gradient_checkpointing", "--gradient-checkpointing/--no-gradient-checkpointing"),
    ("save_steps", "--save-steps"), ("keep_checkpoints", "--keep-checkpoints"), ("seed", "--seed"),
    ("question_field", "--question-field"), ("answer_field", "--answer-field"),
    ("resume", "--resume"), ("force", "--force"), ("dry_run", "--dry-run"),
]
TRAIN_FIELDS = [
    ("method", "--method"), ("augmented", "--augmented"), ("forget", "--forget"), ("retain", "--retain"),
    ("min_forget_coverage", "--min-forget-coverage"), ("forget_weight", "--forget-weight"),
    ("retain_weight", "--retain-weight"), ("kl_weight", "--kl-weight"), ("kl_positions", "--kl-positions"),
    ("npo_beta", "--npo-beta"), ("npo_retain", "--npo-retain"), ("reference_model", "--reference-model"),
] + COMMON_FIELDS
INJECT_FIELDS = [("data", "--data")] + COMMON_FIELDS


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """Return (click type, is boolean flag) for a config field's annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return click.Choice(list(typing.get_args(annotation))), False
    if origin is list:
        return _click_type(typing.get_args(annotation)[0])[0], False
    if annotation is bool:
        return bool, True
    if annotation is Path:
        return click.Path(path_type=Path), False
    return annotation, False


def config_options(cls: type, fields: list[tuple[str, str]]) -> Callable[[Callable], Callable]:
    """Add one click option per config field, with the field's help, default and allowed values."""
    hints = typing.get_type_hints(cls)
    by_name = {item.name: item for item in dataclasses.fields(cls)}

    def decorate(function: Callable) -> Callable:
        for name, flag in reversed(fields):
            item = by_name[name]
            click_type, is_flag = _click_type(hints[name])
            help_text = item.metadata.get("help", "")
            if item.metadata.get("paper"):
                help_text += " (ReLearn paper default)"
            default = item.default if item.default is not dataclasses.MISSING else None
            if not is_flag and default is not None:
                help_text += f" [default: {default}]"
            options: dict[str, Any] = {"default": None, "help": help_text}
            if is_flag and "/" not in flag:
                options = {"is_flag": True, "default": False, "help": help_text}
            elif is_flag:
                options["default"] = None
            else:
                options["type"] = click_type
            if typing.get_origin(hints[name]) is list:
                options["multiple"] = True
                options["default"] = ()
            function = click.option(flag, name, **options)(function)
        return function

    return decorate


def build_stage_config(ctx: click.Context, cls: type, fields: list[tuple[str, str]], section: str,
                       config_file: Path | None) -> Any:
    from ..config import build_config

    given = given_options(ctx, [name for name, _ in fields])
    return build_config(cls, config_file, given, section=section)


@click.command("train", epilog=TRAIN_EPILOG)
@config_options(TrainConfig, TRAIN_FIELDS)
@config_option
@click.pass_context
def train_command(ctx: click.Context, config_file: Path | None, **_: Any) -> None:
    """Unlearn: train a LoRA adapter on the augmented forget set with retain CE and KL to the base model.

    The objective is forget_weight x CE(augmented forget set) + retain_weight x
    CE(retain set) + kl_weight x KL(reference || model) on the retain set. The
    baselines ga, gd and npo train on the original forget set (--forget).
    """
    from ..train.stage import run_train

    config = build_stage_config(ctx, TrainConfig, TRAIN_FIELDS, "train", config_file)
    result = _run_with_rendering(lambda progress, on_plan: run_train(config, progress, on_plan), config)
    if not result.dry_run:
        _render_result("train", result, [("adapter", result.adapter)])


@click.command("inject", epilog=INJECT_EPILOG)
@config_options(InjectConfig, INJECT_FIELDS)
@config_option
@click.pass_context
def inject_command(ctx: click.Context, config_file: Path | None, **_: Any) -> None:
    """Teach the base model a set of facts (plain fine-tuning) and save the merged model to OUT/model.

    This builds a "vanilla" model that answers with the forget set's facts, so
    forgetting can be shown on a base that never saw them. Pass OUT/model as
    --base to train.
    """
    from ..train.inject import run_inject

    config = build_stage_config(ctx, InjectConfig, INJECT_FIELDS, "inject", config_file)
    result = _run_with_rendering(lambda progress, on_plan: run_inject(config, progress, on_plan), config)
    if not result.dry_run:
        _render_result("inject", result, [("merged model", result.model), ("adapter", result.adapter)])


def _run_with_rendering(run: Callable[[Any, Any], Any], config: Any) -> Any:
    from ..train.loop import TrainingInterrupted
    from .common import RichProgress, hide_transformers_bars, is_quiet

    def show_plan(plan: Any) -> None:
        if config.dry_run or not is_quiet():
            _render_plan(plan, dry_run=config.dry_run)

    hide_transformers_bars()
    try:
        with RichProgress() as progress:
            return run(progress, show_plan)
    except TrainingInterrupted as interrupted:
        where = f"checkpoint saved in {interrupted.checkpoint}" if interrupted.checkpoint else "no checkpoint yet"
        click.echo(
            f"interrupted after step {interrupted.step}; {where}. Run the same command with --resume to continue.",
            err=True,
        )
        raise click.exceptions.Exit(130) from None


def _render_plan(plan: Any, dry_run: bool) -> None:
    from rich.table import Table

    from .common import get_console

    title = f"{plan.stage} plan" + (" (dry run: nothing is trained)" if dry_run else "")
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in plan.rows():
        table.add_row(label, value)
    get_console().print(table)


def _render_result(stage: str, result: Any, paths: list[tuple[str, Any]]) -> None:
    from rich.table import Table

    from .common import get_console

    table = Table(title=f"{stage} finished", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    final = result.final_metrics or {}
    table.add_row("steps", f"{result.steps}" + (f" (resumed after step {result.resumed_from_step})"
                                                  if getattr(result, "resumed_from_step", None) else ""))
    for key, label in (("forget_ce", "final forget CE"), ("npo", "final NPO term"),
                       ("retain_ce", "final retain CE"), ("kl", "final KL")):
        if final.get(key) is not None:
            table.add_row(label, f"{final[key]:.4f}")
    if result.seconds is not None:
        table.add_row("time", f"{result.seconds:.1f} s")
    for label, path in paths:
        table.add_row(label, str(path))
    table.add_row("loss curve", str(result.loss_curve))
    table.add_row("metrics", str(result.out / "metrics.jsonl"))
    get_console().print(table)


COMMANDS = [inject_command, train_command]
