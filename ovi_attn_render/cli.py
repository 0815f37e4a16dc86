"""The `ovi-attn` command: a thin Typer layer over the two packages' library APIs.

Render-side commands (render, info, compare) live in `ovi_attn_render.commands`; the
GPU-side ones (capture, tokens, eval) in `ovi_attn_capture.pipeline.commands`, found through the
entry-point hook COMMAND_HOOK (render never imports capture). That module declares its
options without importing torch, so `ovi-attn --help` and rendering work where torch is
not installed.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from ovi_attn_render import __version__
from ovi_attn_render.common.errors import Interrupted, UserError

app = typer.Typer(
    name="ovi-attn",
    help="See what Ovi attends to: capture cross-attention maps, then render them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ovi-attn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of errors."),
) -> None:
    """Declares the global flags; main() reads --debug from the arguments itself, before parsing."""


COMMAND_HOOK = "ovi_attn.commands"  # entry-point group: `register(app)` functions of other packages


def _register_commands() -> None:
    """Render's own commands, then those of any installed package that names a `register(app)`
    function under the entry-point group COMMAND_HOOK (ovi_attn_capture adds capture, tokens
    and eval this way), so render never imports the capture side and works without it."""
    from importlib.metadata import entry_points

    from ovi_attn_render import commands as render_commands

    render_commands.register(app)
    from ovi_attn_render.viewer import command as view_command

    view_command.register(app)
    for hook in sorted(entry_points(group=COMMAND_HOOK), key=lambda e: e.name):
        hook.load()(app)


_register_commands()


def _command_of(args: list[str]) -> str:
    for a in args:
        if not a.startswith("-"):
            return a + " " if a in ("capture", "render", "info", "compare", "tokens", "eval", "view") else ""
    return ""


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes print one sentence and exit 2; --debug adds the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="ovi-attn", standalone_mode=False)
    except UserError as e:
        if debug:
            err_console.print_exception()
        colour = "yellow" if isinstance(e, Interrupted) else "red"
        err_console.print(f"[bold {colour}]{e.label}:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130
    except SystemExit as e:  # typer.Exit inside commands
        return int(e.code or 0)
    except Exception as e:  # usage errors (typer's click or click itself) and unexpected failures
        name = type(e).__name__
        if name in ("Exit",):  # --version, --help
            return int(getattr(e, "exit_code", 0) or 0)
        if name == "Abort":
            return 1
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # a ClickException of either click
            if name == "NoArgsIsHelpError":
                return 0
            if debug:
                err_console.print_exception()
            err_console.print(f"[bold red]error:[/] {escape(e.format_message())} (see `ovi-attn "
                              f"{_command_of(args)}--help`)", highlight=False, soft_wrap=True)
            return 2
        if debug:
            raise
        err_console.print(f"[bold red]internal error:[/] {name}: {escape(str(e))} (run with --debug for the traceback)",
                          highlight=False, soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
