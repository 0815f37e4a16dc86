"""CLI commands of the GPU side: `capture` and `tokens`.

Declared without importing torch (the options are plain Typer), so `ovi-attn --help`
works on a render-only install; torch is imported when a command runs. The options that
set prompt-file keys are made from the prompt file's one table of keys (prompt_file.KEYS:
flag, help, default), so a key, its flag and its help cannot drift apart.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.common.options import number, whole_number

from ovi_attn_capture.pipeline.prompt_file import KEYS

console = Console(stderr=True)


def _need_torch(command: str) -> None:
    """capture and tokens run the model side; a render-only install lacks it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError(f"`ovi-attn {command}` needs the capture extra (torch and the model libraries); "
                        f"install it with `pip install 'ovi-attn[capture]'`.") from None


def _overrides(**flags) -> dict:
    """CLI values -> prompt-file overrides keyed by flag (prompt_file.OVERRIDABLE maps each
    flag to its key and names the flag in errors); None means not given."""
    out = {}
    for name, value in flags.items():
        if value is None:
            continue
        if name in ("tokens", "kinds") and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        out["--" + name.replace("_", "-")] = value
    return out


def _help(key) -> str:
    """A key's help text with the value used when neither the flag nor the prompt file sets it."""
    return f"{key.help} [default: {key.default_text}]"


def _key_option(key) -> tuple[str, inspect.Parameter]:
    """One prompt-file key as a Typer option: its flag, help, parser (typer reads the
    command's signature, so the options are parameters of a generated signature)."""
    flag = key.cli_flag
    extra = {}
    if key.cli_type is int:
        extra["parser"] = whole_number(flag, key.example_value)
    elif key.cli_type is float:
        extra["parser"] = number(flag, key.example_value)
    if key.cli_type is bool:
        option = typer.Option(None, f"{flag}/--no-{flag[2:]}", help=_help(key))
    else:
        option = typer.Option(None, flag, metavar=key.metavar, help=_help(key), **extra)
    name = flag[2:].replace("-", "_")
    return name, inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                   annotation=Optional[key.cli_type])


def _with_key_options(only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()):
    """The command takes the prompt-file keys (prompt_file.KEYS, all or `only`) as options;
    they reach it in its **flags, named by flag (--num-steps -> num_steps)."""

    def wrap(command):
        sig = inspect.signature(command, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        keys = [k for k in KEYS.values() if (only is None or k.name in only) and k.name not in exclude]
        generated = [_key_option(k)[1] for k in keys]

        @functools.wraps(command)
        def run(**kwargs):
            return command(**kwargs)

        run.__signature__ = sig.replace(parameters=own + generated)
        run.__annotations__ = {p.name: p.annotation for p in own + generated}
        del run.__wrapped__  # typer must see the generated signature, not the original's
        return run

    return wrap


@_with_key_options(exclude=("output",))
def capture(
    prompt_files: list[Path] = typer.Argument(..., help="Prompt YAML files or folders of them (see docs/PROMPT.md); "
                                              "several, a folder, a list of variants or `seeds:` make a batch."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar=KEYS["output"].metavar,
                                          help=_help(KEYS["output"])),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file (a batch: redo complete ones too)."),
    no_mp4: bool = typer.Option(False, "--no-mp4", help="Do not write the clip as MP4 beside the .h5."),
    no_progress: bool = typer.Option(False, "--no-progress",
                                     help="No progress (a bar on a terminal, else a line on stderr every 10 s)."),
    **flags,
) -> None:
    """Generate a clip and capture its cross-attention maps into one HDF5 file (or a batch of them).

    Every option overrides the prompt file's key of the same meaning; [default: ...] is the
    value used when neither sets it. Sizes are decimal (1 MB = 10^6 bytes)."""
    _need_torch("capture")
    from ovi_attn_capture.pipeline.batch import is_single
    from ovi_attn_capture.parallel.distributed import launched
    from ovi_attn_capture.pipeline.prompt_file import load_prompt_file

    overrides = _overrides(**flags)
    if not is_single(prompt_files, overrides):
        from ovi_attn_capture.pipeline.batch_commands import capture_batch

        raise SystemExit(capture_batch(prompt_files, overrides, output, force=force, mp4=not no_mp4,
                                       progress=not no_progress, console=console))
    prompt_file = prompt_files[0]
    run = load_prompt_file(prompt_file, overrides)
    _say_notes(run)
    _check_token_indices(run)
    out = output or (Path(run.output) if run.output else Path(Path(prompt_file).with_suffix(".h5").name))
    if launched() or run.sp_size > 1:  # one prompt across the launcher's processes
        from ovi_attn_capture.pipeline.batch_commands import capture_one_distributed

        raise SystemExit(capture_one_distributed(run, prompt_file, Path(out), force=force, mp4=not no_mp4,
                                                 console=console))
    from ovi_attn_capture.pipeline.capture import run_capture

    summary = run_capture(run, Path(out), force=force, console=console, progress=not no_progress, mp4=not no_mp4)
    _print_summary(summary)


def _print_summary(s) -> None:
    from rich.panel import Panel

    from ovi_attn_render.common.units import format_bytes

    body = (f"[bold]{s.path}[/]  {format_bytes(s.bytes)}\n"
            f"{s.steps} steps x {s.layers} layers, groups: {', '.join(s.groups)}\n"
            f"kinds: {', '.join(s.kinds)}; {s.maps_written} map sets written\n"
            f"clip: {s.video_frames} frames, {s.audio_seconds:.2f} s of audio; took {s.seconds:.1f} s"
            + (f"\nmp4: {s.clip_path}" if s.clip_path else ""))
    from rich.markup import escape

    from ovi_attn_capture.pipeline.outputs import render_hint, shell_command

    console.print(Panel(body, title="capture complete", expand=False))
    console.print(f"next: [cyan]{escape(shell_command('ovi-attn', 'info', s.path))}[/] or "
                  f"[cyan]{escape(render_hint(s.path, s.groups))}[/]", highlight=False, soft_wrap=True)


@_with_key_options(only=("model", "ckpt_dir", "capture.tokens"))
def tokens(
    prompt_file: Path = typer.Argument(..., help="The prompt YAML."),
    **flags,
) -> None:
    """Print the prompt's tokens: index, piece, word, character span, and which selections hit them."""
    _need_torch("tokens")
    from ovi_attn_capture.pipeline.prompt_file import load_prompt_file
    from ovi_attn_render.contract.token_groups import TokenTable, render_token_table

    run = load_prompt_file(prompt_file, _overrides(**flags))
    _say_notes(run)
    from ovi_attn_capture.pipeline.preflight import formatted_prompt, tokenizer_for, tokens_cut

    encoder = tokenizer_for(run)
    text = formatted_prompt(run)
    table = TokenTable.of(text, encoder.tokenize(text), run.capture.tokens, text_len=encoder.text_len)
    render_token_table(table.rows(), Console())
    cut = tokens_cut(encoder, text)
    if cut:
        console.print(f"[yellow]note:[/] the prompt has {encoder.text_len + cut} tokens; the text encoder reads "
                      f"{encoder.text_len}, so the last {cut} are cut (not shown, never seen by the model).")


def _say_notes(run) -> None:
    for note in run.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def _check_token_indices(run) -> None:
    """Token-index selections ('#5', 5-9) against the prompt's real token count, with the
    tokenizer only (cheap), so a wrong index fails before the model loads, in the same words
    as `ovi-attn tokens`."""
    from ovi_attn_capture.pipeline.preflight import formatted_prompt, tokenizer_for
    from ovi_attn_render.contract.token_groups import is_index_selection, resolve_groups

    if not any(is_index_selection(s) for s in run.capture.tokens):
        return
    encoder = tokenizer_for(run)
    text = formatted_prompt(run)
    resolve_groups(run.capture.tokens, text, encoder.tokenize(text), text_len=encoder.text_len)


def register(app: typer.Typer) -> None:
    from ovi_attn_capture.toy.commands import register as register_toy_eval

    app.command("capture")(capture)
    app.command("tokens")(tokens)
    register_toy_eval(app)  # `ovi-attn eval`: the ground-truth check on the toy world
