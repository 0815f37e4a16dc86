"""`ovi-attn eval`: score the toy model's maps against ground truth. Declared without importing torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.common.options import whole_number

from ovi_attn_capture.model import registry
from ovi_attn_capture.toy import TOY_DIR


def eval_command(
    eval_file: Path = typer.Argument(TOY_DIR / "eval.yaml", help="Held-out prompts and settings (data/toy/eval.yaml)."),
    output: Path = typer.Option(Path("toy_eval"), "-o", "--output", help="Folder for the .h5 runs and eval.json."),
    num_steps: Optional[int] = typer.Option(None, "--num-steps", metavar="<int>",
                                            parser=whole_number("--num-steps", "16"),
                                            help="Sampler steps [default: the file's steps]."),
    prompts: Optional[int] = typer.Option(None, "--prompts", metavar="<int>", parser=whole_number("--prompts", "4"),
                                          help="Only the first N prompts [default: all]."),
    model: str = typer.Option("toy", "--model", metavar="<name>",
                              help=f"The bundled toy to score: {', '.join(registry.toy_models())}."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Other weights: a toy .safetensors file, or a folder "
                                           "with the --model's file (as training writes it), text_encoder.safetensors "
                                           "and tokenizer.json beside it [default: the --model's file in data/toy/]."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or auto."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier evaluation in the output folder."),
) -> None:
    """Generate held-out prompts with the toy model, capture their maps and score them against the
    objects and beeps found in the generated clips (pointing game, IoU, text->audio)."""
    from rich.console import Console

    from ovi_attn_capture.toy.evaluate import evaluate, load_eval_file

    if model not in registry.toy_models():
        raise UserError(f"--model {model} is not a toy model; `ovi-attn eval` scores {' or '.join(registry.toy_models())}.")
    settings = load_eval_file(eval_file)
    if num_steps is not None:
        if num_steps < 1:
            raise UserError(f"--num-steps {num_steps} is too few; give 1 or more sampler steps.")
        settings.steps = num_steps
    if prompts is not None and prompts < 1:
        raise UserError(f"--prompts {prompts} selects no prompts; give 1 or more (or leave it out for all "
                        f"{len(settings.prompts)}).")
    chosen = settings.prompts[:prompts] if prompts is not None else settings.prompts
    console = Console()
    console.print(f"evaluating {len(chosen)} prompts at {settings.steps} steps -> {output}/", highlight=False)
    evaluate(chosen, weights, settings.steps, "all", output, settings, device=device, console=console, force=force,
             model=model)
    console.print(f"scores: {output / 'eval.json'}; each run's scores are in its `toy_eval` attribute", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
