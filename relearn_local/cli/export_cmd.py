"""``relearn-local export``: turn a trained adapter into a GGUF and an Ollama Modelfile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .common import EXISTING_PATH, OUT_PATH, config_option, force_option, get_console, given_options, is_quiet

# Kept in step with relearn_local.export.config (QUANT_TYPES, MODES, MERGE_DTYPES); importing it here would
# load the stage package for --help. tests/test_export_cli.py checks that the lists agree.
QUANT_CHOICES = ("auto", "q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16")
MODE_CHOICES = ("merged", "adapter")
MERGE_DTYPE_CHOICES = ("float32", "bfloat16", "float16")

OPTION_FIELDS = {
    "adapter": "adapter", "out": "out", "name": "name", "base": "base", "quant": "quant", "mode": "mode",
    "merge_dtype": "merge_dtype", "llama_cpp": "llama_cpp", "llama_cpp_sdist": "llama_cpp_sdist",
    "offline": "offline", "forget": "forget", "parity_questions": "parity_questions",
    "parity_tokens": "parity_tokens", "num_ctx": "num_ctx", "temperature": "temperature", "top_k": "top_k",
    "top_p": "top_p", "system": "system", "ollama_create": "ollama_create", "ollama_host": "ollama_host",
    "ollama_timeout": "ollama_timeout", "force": "force", "dry_run": "dry_run",
}


@click.command(
    "export",
    epilog="""
\b
Examples:
  relearn-local export --adapter runs/train --out runs/export --name relearned-gemma
  relearn-local export --adapter runs/train --out runs/export-f16 --quant f16
  relearn-local export --adapter runs/train --out runs/export --ollama-create
  relearn-local export --adapter runs/train/adapter --base gemma3-270m --out runs/export --dry-run
  relearn-local export --adapter runs/train --out runs/export --llama-cpp ~/src/llama.cpp
""",
)
@click.option("--adapter", type=EXISTING_PATH, required=True, metavar="DIR",
              help="Train run folder (uses its adapter/) or a PEFT adapter folder.")
@click.option("--out", type=OUT_PATH, required=True, metavar="DIR",
              help="Export folder: merged/, NAME-QUANT.gguf, Modelfile, export_summary.json.")
@click.option("--name", default=None, metavar="NAME",
              help="Ollama model name [default: relearned-<family>, e.g. relearned-gemma].")
@click.option("--base", default=None, metavar="MODEL",
              help="Base model the adapter was trained on [default: from the adapter's relearn_base.json].")
@click.option("--quant", type=click.Choice(QUANT_CHOICES, case_sensitive=False), default=None,
              help="GGUF output type [default: auto, the smallest of q4_k_m, q5_k_m, q6_k, q8_0 that passes "
                   "the parity check, forgetting included]; f16 needs no quantizer.")
@click.option("--mode", type=click.Choice(MODE_CHOICES), default=None,
              help="merged: one GGUF [default]; adapter: base GGUF + LoRA GGUF with an ADAPTER line, "
                   "for architectures whose adapters Ollama loads (else merged, with a message).")
@click.option("--merge-dtype", type=click.Choice(MERGE_DTYPE_CHOICES), default=None,
              help="Precision of the merged copy [default: float32]; never 4-bit.")
@click.option("--llama-cpp", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Use the converter of this llama.cpp checkout.")
@click.option("--llama-cpp-sdist", type=EXISTING_PATH, default=None, metavar="FILE",
              help="llama-cpp-python source archive (.tar.gz) to take the converter from.")
@click.option("--offline", is_flag=True, default=None,
              help="Never download the converter; fail if no local copy is found.")
@click.option("--forget", type=EXISTING_PATH, default=None, metavar="FILE",
              help="Forget set for the merge and parity checks [default: the train run's inputs].")
@click.option("--parity-questions", type=int, default=None, metavar="N",
              help="Forget questions for the parity and forgetting check [default: 8; at most 100; 0 skips it].")
@click.option("--parity-tokens", type=int, default=None, metavar="N",
              help="Greedy tokens per parity answer [default: 32].")
@click.option("--num-ctx", type=int, default=None, metavar="TOKENS", help="Modelfile num_ctx [default: 4096].")
@click.option("--temperature", type=float, default=None, help="Modelfile temperature [default: 0, greedy].")
@click.option("--top-k", type=int, default=None, help="Modelfile top_k [default: 64].")
@click.option("--top-p", type=float, default=None, help="Modelfile top_p [default: 0.95].")
@click.option("--system", default=None, metavar="TEXT",
              help="Modelfile SYSTEM prompt; only for families with a system role (not Gemma).")
@click.option("--ollama-create", is_flag=True, default=None,
              help="Upload the GGUF to Ollama, create the model, and check that Ollama lists it.")
@click.option("--ollama-host", default=None, metavar="URL",
              help="Ollama address [default: $OLLAMA_HOST, else http://127.0.0.1:11434].")
@click.option("--ollama-timeout", type=float, default=None, metavar="SECONDS",
              help="Seconds to wait for each Ollama request [default: 600].")
@config_option
@force_option
@click.option("--dry-run", is_flag=True, default=None, help="Check tools, inputs and disk, print the plan, and stop.")
@click.pass_context
def export_command(ctx: click.Context, config_file: Path | None, **options: Any) -> None:
    """Merge a trained adapter, convert it to GGUF, quantize it, and write an Ollama Modelfile.

    Checks before the merge that the converter, the quantizer and enough disk
    space are at hand, and after it that the merged model matches the adapter
    model, that the GGUF stops at the end-of-turn token, and that the GGUF's
    greedy output matches the merged model's without any forgotten fact the
    merged model withholds (parity). With --quant auto (the default) the
    first of q4_k_m, q5_k_m, q6_k and q8_0 that passes is kept. Exits 1 when
    the parity check fails. The files are then kept, and nothing is sent to
    Ollama.
    """
    from ..config import build_config
    from ..export import ExportConfig, run_export
    from .common import RichProgress

    config = build_config(ExportConfig, config_file, given_options(ctx, OPTION_FIELDS), section="export")
    console = get_console()
    with RichProgress() as progress:
        result = run_export(config, progress, on_plan=lambda plan: _print_plan(plan))
    if result.dry_run:
        console.print("[bold]dry run[/bold]: nothing was written")
        return
    _print_result(console, result)
    if result.parity is not None and result.parity.skipped is None and not result.parity.passed:
        click.echo(f"error: parity check failed: {result.parity.verdict()}; see {result.summary_path}", err=True)
        if result.parity.restored_items:
            click.echo("Do not serve this GGUF: rounding its weights brought back facts the model was trained to "
                       "forget. Export with a larger type (--quant q8_0, or --quant auto to find the smallest that "
                       "keeps them forgotten).", err=True)
        raise SystemExit(1)


def _print_plan(plan: Any) -> None:
    if is_quiet():
        return
    from rich.table import Table

    table = Table(title="export plan", show_header=False, title_justify="left")
    table.add_column("item", style="bold")
    table.add_column("value")
    for label, value in plan.rows():
        table.add_row(label, value)
    get_console(stderr=True).print(table)


def _print_result(console: Any, result: Any) -> None:
    from rich.table import Table

    from ..export.preflight import human_bytes

    title = f"exported {result.name}"
    if result.parity.skipped is None and not result.parity.passed:
        title += " (parity check FAILED: do not serve)"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("item", style="bold")
    table.add_column("value")
    if result.merged_dir:
        table.add_row("merged checkpoint", str(result.merged_dir))
    table.add_row("GGUF", f"{result.gguf_path} ({human_bytes(result.gguf_path.stat().st_size)})")
    if result.adapter_gguf_path:
        table.add_row("adapter GGUF", str(result.adapter_gguf_path))
    table.add_row("Modelfile", str(result.modelfile_path))
    check = result.merge_check
    table.add_row("merge check", f"max logit difference to the adapter model {check.max_diff_to_adapter:.2g} "
                                 f"(allowed {check.tolerance:g}); to the base {check.max_diff_to_base:.3g} "
                                 f"(at least {check.min_effect:g}); tied embeddings: {check.tied_embeddings}")
    gguf = result.gguf
    table.add_row("GGUF check", f"{gguf.token_count} tokens = embedding rows; EOS {gguf.eos_id}, end of turn "
                                f"{gguf.eot_id}; add BOS {gguf.add_bos}; chat template set")
    if len(result.attempts) > 1:
        tried = ", ".join(f"{attempt['quant']} {'passed' if attempt['passed'] else 'failed'} "
                          f"({human_bytes(attempt['bytes'])})" for attempt in result.attempts)
        table.add_row("output types tried", tried)
    table.add_row("parity", result.parity.verdict())
    timings = ", ".join(f"{step} {value['wall']:.0f} s" for step, value in result.timings.items())
    table.add_row("time", timings)
    for note in result.notes:
        table.add_row("note", note)
    console.print(table)
    if result.parity.items:
        _print_parity(console, result.parity)
    if result.parity.skipped is None and not result.parity.passed:
        reason = result.ollama_skipped or "the parity check failed"
        console.print(f"[bold red]Not ready to serve[/bold red]: {reason}. The files are kept for inspection.")
        return
    if result.ollama is not None:
        console.print(f"Ollama at {result.ollama.host} lists [bold]{result.ollama.listed_as}[/bold]. Try it:")
    else:
        console.print("Create the Ollama model with:")
        console.print(f"  {result.create_command}", soft_wrap=True)
        console.print("then try it:")
    console.print(f"  {result.run_command}", soft_wrap=True)


def _print_parity(console: Any, parity: Any) -> None:
    from rich.table import Table

    table = Table(title="parity: merged model vs GGUF (greedy)", title_justify="left")
    table.add_column("question")
    table.add_column("merged model")
    table.add_column("GGUF")
    table.add_column("same first tokens")
    table.add_column("forgotten facts back")
    for item in parity.items:
        if item.gguf_leaks is None:
            back = "not checked"
        else:
            back = ", ".join(item.restored) if item.restored else "none"
        table.add_row(item.question, item.reference_text, item.gguf_text,
                      f"{'yes' if item.matched else 'no'} ({item.common_prefix})", back)
    console.print(table)


COMMANDS = [export_command]
