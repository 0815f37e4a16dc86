"""CLI commands of the GPU side: `capture` and `tokens`.

Declared without importing torch (the options are plain Typer), so `ovi-attn --help`
works on a render-only install; torch is imported when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.common.options import number, whole_number

# The prompt file's default negative prompts (prompt_file.py), repeated so --help needs no yaml import.
VIDEO_NEGATIVE_PROMPT = "jitter, bad hands, blur, distortion"
AUDIO_NEGATIVE_PROMPT = "robotic, muffled, echo, distorted"

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


def _flag(text: str, default: str) -> str:
    """Help text with the value used when neither the flag nor the prompt file sets it
    (prompt_file.KEYS holds these defaults; a test keeps the two in step)."""
    return f"{text} [default: {default}]"


_INT, _NUM = whole_number, number


def capture(
    prompt_files: list[Path] = typer.Argument(..., help="Prompt YAML files or folders of them (see docs/PROMPT.md); "
                                              "several, a folder, a list of variants or `seeds:` make a batch."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar="<path>", help=_flag(
        "Output .h5; for a batch, the folder of its files.", "the file's output:, else <prompt-file>.h5 here")),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file (a batch: redo complete ones too)."),
    seed: Optional[int] = typer.Option(None, metavar="<int>", parser=_INT("--seed", "42"),
                                       help=_flag("Random seed.", "100")),
    seeds: Optional[str] = typer.Option(None, metavar="<list>",
                                        help="A seed sweep, comma separated: 1,2,3 (one file per seed)."),
    sp_size: Optional[int] = typer.Option(None, "--sp-size", metavar="<int>", parser=_INT("--sp-size", "2"),
                                          help=_flag("Sequence parallel: processes per prompt (under torchrun).", "1")),
    prompt: Optional[str] = typer.Option(None, metavar="<text>", help="Replace the prompt text."),
    video_negative_prompt: Optional[str] = typer.Option(
        None, "--video-negative-prompt", metavar="<text>",
        help=_flag("Text of the video branch's unconditional (negative) pass; --branch uncond maps attend to it.",
                   f"\"{VIDEO_NEGATIVE_PROMPT}\"")),
    audio_negative_prompt: Optional[str] = typer.Option(
        None, "--audio-negative-prompt", metavar="<text>",
        help=_flag("Text of the audio branch's negative pass.", f"\"{AUDIO_NEGATIVE_PROMPT}\"")),
    tokens: Optional[str] = typer.Option(None, metavar="<list>",
                                         help=_flag("Token selections, comma separated: man,park,man#2,all.", "all")),
    layers: Optional[str] = typer.Option(None, metavar="<sel>",
                                         help=_flag("Layers to capture: all, 10-19,25 or 0:30:2.", "all")),
    capture_steps: Optional[str] = typer.Option(None, "--capture-steps", metavar="<sel>",
                                                help=_flag("Steps to capture: all, 0:50:5, every 5.", "all")),
    kinds: Optional[str] = typer.Option(None, metavar="<list>", help=_flag(
        "Maps to capture, comma separated: text_video, text_audio, video_audio, audio_video.", "all four")),
    branch: Optional[str] = typer.Option(None, metavar="<name>", help=_flag(
        "Guidance pass to capture: cond (the prompt), uncond (the negative prompts) or both.", "cond")),
    heads: Optional[str] = typer.Option(None, metavar="<mode>", help=_flag("mean over heads, or all heads.", "mean")),
    map_dtype: Optional[str] = typer.Option(None, "--map-dtype", metavar="<enc>", help=_flag(
        "Map encoding: int16 (CF-packed), float32, float32-deflate or float16.", "int16")),
    model: Optional[str] = typer.Option(None, metavar="<name>", help=_flag(
        "toy, tiny, 720x720_5s, 960x960_5s or 960x960_10s; overriding the file's model drops its "
        "model-only keys (ckpt_dir, fp8, size, slg_layer, layers).", "toy")),
    ckpt_dir: Optional[str] = typer.Option(None, "--ckpt-dir", metavar="<path>",
                                           help=_flag("Ovi's checkpoint folder (released models).", "none")),
    num_steps: Optional[int] = typer.Option(None, "--num-steps", metavar="<int>",
                                            parser=_INT("--num-steps", "30"), help=_flag("Denoising steps.", "50")),
    solver: Optional[str] = typer.Option(None, metavar="<name>", help=_flag("unipc, euler or dpm++.", "unipc")),
    shift: Optional[float] = typer.Option(None, metavar="<float>", parser=_NUM("--shift", "5.0"),
                                          help=_flag("Sigma shift of the schedule.", "5.0")),
    height: Optional[int] = typer.Option(None, metavar="<int>", parser=_INT("--height", "720"), help=_flag(
        "Video height (rescaled to the model's area, multiples of 32).", "the model's")),
    width: Optional[int] = typer.Option(None, metavar="<int>", parser=_INT("--width", "720"),
                                        help=_flag("Video width.", "the model's")),
    video_guidance_scale: Optional[float] = typer.Option(
        None, "--video-guidance-scale", metavar="<float>", parser=_NUM("--video-guidance-scale", "4.0"),
        help=_flag("Classifier-free guidance strength of the video (cond - uncond, scaled).", "4.0")),
    audio_guidance_scale: Optional[float] = typer.Option(
        None, "--audio-guidance-scale", metavar="<float>", parser=_NUM("--audio-guidance-scale", "3.0"),
        help=_flag("Classifier-free guidance strength of the audio.", "3.0")),
    slg_layer: Optional[int] = typer.Option(None, "--slg-layer", metavar="<int>", parser=_INT("--slg-layer", "11"),
                                            help=_flag("Block skipped in the negative pass (-1: none).",
                                                       "the model's, 11 for released models")),
    mode: Optional[str] = typer.Option(None, metavar="<mode>", help=_flag("t2v or i2v.", "t2v, i2v with --image")),
    image: Optional[str] = typer.Option(None, metavar="<path>", help="First frame for i2v."),
    device: Optional[str] = typer.Option(None, metavar="<dev>", help=_flag("auto, cpu, cuda or cuda:N.", "auto")),
    dtype: Optional[str] = typer.Option(None, metavar="<dtype>",
                                        help=_flag("Compute dtype: bfloat16 or float32.", "bfloat16")),
    cpu_offload: Optional[bool] = typer.Option(None, "--cpu-offload/--no-cpu-offload", help=_flag(
        "Keep each component on the GPU only while used.", "off")),
    fp8: Optional[bool] = typer.Option(None, "--fp8/--no-fp8",
                                       help=_flag("Use the float8 checkpoint (720x720_5s only).", "off")),
    max_file_gb: Optional[float] = typer.Option(None, "--max-file-gb", metavar="<GB>",
                                                parser=_NUM("--max-file-gb", "20"),
                                                help=_flag("Refuse captures larger than this (1 GB = 10^9 bytes).",
                                                           "20")),
    no_mp4: bool = typer.Option(False, "--no-mp4", help="Do not write the clip as MP4 beside the .h5."),
    no_progress: bool = typer.Option(False, "--no-progress",
                                     help="No progress (a bar on a terminal, else a line on stderr every 10 s)."),
) -> None:
    """Generate a clip and capture its cross-attention maps into one HDF5 file (or a batch of them).

    Every option overrides the prompt file's key of the same meaning; [default: ...] is the
    value used when neither sets it. Sizes are decimal (1 MB = 10^6 bytes)."""
    _need_torch("capture")
    from ovi_attn_capture.pipeline.batch import is_single
    from ovi_attn_capture.parallel.distributed import launched
    from ovi_attn_capture.pipeline.prompt_file import load_prompt_file

    overrides = _overrides(
        seed=seed, seeds=seeds, sp_size=sp_size, prompt=prompt, video_negative_prompt=video_negative_prompt,
        audio_negative_prompt=audio_negative_prompt, tokens=tokens, layers=layers, capture_steps=capture_steps,
        kinds=kinds, branch=branch, heads=heads, map_dtype=map_dtype, model=model, ckpt_dir=ckpt_dir,
        num_steps=num_steps, solver=solver, shift=shift, height=height, width=width,
        video_guidance_scale=video_guidance_scale, audio_guidance_scale=audio_guidance_scale, slg_layer=slg_layer,
        mode=mode, image=image, device=device, dtype=dtype, cpu_offload=cpu_offload, fp8=fp8,
        max_file_gb=max_file_gb)
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


def tokens(
    prompt_file: Path = typer.Argument(..., help="The prompt YAML."),
    model: Optional[str] = typer.Option(None, help="Override the model (its tokenizer is used)."),
    ckpt_dir: Optional[str] = typer.Option(None, "--ckpt-dir"),
    select: Optional[str] = typer.Option(None, "--tokens", help="Selections to show instead of the file's."),
) -> None:
    """Print the prompt's tokens: index, piece, word, character span, and which selections hit them."""
    _need_torch("tokens")
    from ovi_attn_capture.pipeline.prompt_file import load_prompt_file
    from ovi_attn_render.contract.token_groups import TokenTable, render_token_table

    run = load_prompt_file(prompt_file, _overrides(model=model, ckpt_dir=ckpt_dir, tokens=select))
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
