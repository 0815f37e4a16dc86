"""The prompt file: one YAML file describes a whole capture run.

    prompt: "A man runs in a park. <AUDCAP>footsteps, birds<ENDAUDCAP>"
    model: 720x720_5s
    ckpt_dir: ckpts
    capture:
      tokens: [man, park]

Everything is validated here, before any model loads: broken YAML, unknown keys, wrong
types, impossible values and selections that do not fit the prompt each raise a UserError
naming the key, its line ("example.yaml, line 7") or its CLI flag, and the fix.
docs/PROMPT.md documents every key. Torch-free (pyyaml + difflib only).

Keys whose right value depends on the model (height, width, slg_layer) default to null,
"the model's own value"; `resolve_model_defaults` fills them once the model is known.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from ovi_attn_render.contract import selection
from ovi_attn_render.contract.selection import is_whole_number
from ovi_attn_render.contract.format import MAP_ENCODINGS
from ovi_attn_render.contract.kinds import CAPTURE_KINDS
from ovi_attn_render.contract.token_groups import TEXT_LEN, check_selection, clean_prompt_text
from ovi_attn_render.common.errors import UserError

from ovi_attn_capture.model import registry
from ovi_attn_capture.pipeline.queries import EXAMPLE as QUERY_EXAMPLE, QueryProblem, check_against_run, parse_queries

MODELS = tuple(registry.MODELS)  # every model fact lives in model/registry.py
SOLVERS = registry.SOLVERS
MODES = ("t2v", "i2v")
DTYPES = ("bfloat16", "float32")
KINDS = CAPTURE_KINDS  # the map kinds registry's capture kinds
BRANCHES = ("cond", "uncond", "both")
HEADS = ("mean", "all")
MAP_DTYPES = tuple(MAP_ENCODINGS)  # the file format's map encodings

VIDEO_NEGATIVE_PROMPT = "jitter, bad hands, blur, distortion"  # upstream yaml defaults
AUDIO_NEGATIVE_PROMPT = "robotic, muffled, echo, distorted"


@dataclass
class CaptureSpec:
    """What to record. `layers` and `steps` stay as written until `resolve_model_defaults`
    turns them into sorted lists of indices."""

    tokens: list[str | int] = field(default_factory=lambda: ["all"])
    layers: Any = "all"
    steps: Any = "all"
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    branch: str = "cond"
    heads: str = "mean"
    dtype: str = "int16"  # map encoding, a key of format.MAP_ENCODINGS

    @property
    def branches(self) -> tuple[str, ...]:
        """The classifier-free-guidance passes to record, in file order."""
        return ("cond", "uncond") if self.branch == "both" else (self.branch,)


@dataclass
class RunSpec:
    """One validated capture run: generation settings + what to capture."""

    prompt: str = ""
    video_negative_prompt: str = VIDEO_NEGATIVE_PROMPT
    audio_negative_prompt: str = AUDIO_NEGATIVE_PROMPT
    seed: int = 100
    height: int | None = None  # None: the model's native size
    width: int | None = None
    model: str = registry.DEFAULT_MODEL  # toy: bundled weights, runs anywhere, no checkpoints
    ckpt_dir: Path | None = None
    steps: int = 50  # sampler steps
    solver: str = "unipc"
    shift: float = 5.0
    video_guidance_scale: float = 4.0
    audio_guidance_scale: float = 3.0
    slg_layer: int | None = None  # None: the model's default; -1: no skip-layer guidance
    mode: str = "t2v"
    image: Path | None = None
    dtype: str = "bfloat16"
    device: str = "auto"
    cpu_offload: bool = False
    fp8: bool = False
    output: Path | None = None
    max_file_gb: float = 20.0
    seeds: list[int] | None = None  # a sweep: one capture per seed (batch.py expands it)
    sp_size: int = 1  # ranks that run one prompt together (sequence parallel, under torchrun)
    queries: list | None = None  # query points (queries.QuerySpec) whose self-attention rows are captured
    capture: CaptureSpec = field(default_factory=CaptureSpec)
    source_path: Path | None = None
    source_text: str = ""
    # key -> where its value came from: "example.yaml, line 7", "--seed" or "example.yaml".
    origins: dict[str, str] = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list, repr=False)  # said to the user before the run

    def where(self, key: str) -> str:
        """Where a key's value was set, for error messages raised after loading."""
        return self.origins.get(key, str(self.source_path or "the prompt file"))

    def error(self, key: str, problem: str) -> UserError:
        """A UserError about a key found after loading (e.g. a layer the model lacks):
        `raise spec.error("capture.layers", "selects layer 12, but the tiny model has 4")`."""
        where = self.where(key)
        return UserError(f"{where} {problem}" if where.startswith("--") else f"{where}: {key} {problem}")

    def settings(self) -> dict:
        """Every setting as JSON-able values, for the capture file's `settings` attribute."""
        out = asdict(self)
        out.pop("origins")
        out.pop("notes")
        for key in ("ckpt_dir", "image", "output", "source_path"):
            out[key] = None if out[key] is None else str(out[key])
        return out


def default_run_spec() -> RunSpec:
    """The defaults, unvalidated (no prompt yet)."""
    return RunSpec()


# ---------------------------------------------------------------------------- value checks
# A check takes the YAML value and returns the normalised one, or raises _Bad with a phrase
# that completes "<key> ...", e.g. "must be a whole number, got 'abc'".


class _Bad(Exception):
    pass


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."



def _integer(lo: int | None = None, hi: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not is_whole_number(value):
            raise _Bad(f"must be a whole number, got {_show(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise _Bad(f"must be {bound}, got {value}")
        return value

    return check


def _number(lo: float, *, above: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Bad(f"must be a number, got {_show(value)}")
        if value < lo or (above and value == lo):
            raise _Bad(f"must be {'above' if above else 'at least'} {lo:g}, got {value:g}")
        return float(value)

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_show(value)}")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in options:
            return value.strip().lower()
        close = difflib.get_close_matches(str(value).lower(), options, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise _Bad(f"must be one of {', '.join(options)}, got {_show(value)}{hint}")

    return check


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be text (put it in double quotes), got {_show(value)}")
    return value


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"must be a file or folder path, got {_show(value)}")
    return value.strip()


def _device(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", value.strip().lower()):
        return value.strip().lower()
    raise _Bad(f"must be auto, cpu, cuda or cuda:N, got {_show(value)}")


def _comma_list(value: Any) -> list:
    """A YAML list stays as it is; a string is split at commas (as CLI flags are)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if is_whole_number(value):
        return [value]
    if isinstance(value, list):
        return value
    raise _Bad(f"must be a list such as [man, park], got {_show(value)}")


def _seeds(value: Any) -> list[int]:
    items = _comma_list(value)
    if not items:
        raise _Bad("is an empty list; list one seed or more, or use seed:")
    one = _integer(0, 2**63 - 1)
    try:
        seeds = [one(int(item) if isinstance(item, str) and item.strip().isdigit() else item) for item in items]
    except _Bad as bad:
        raise _Bad(f"items {str(bad).replace('must be a whole number', 'must be whole numbers')}") from None
    if len(set(seeds)) != len(seeds):
        raise _Bad(f"lists a seed twice ({', '.join(map(str, seeds))}); each seed makes one file, list it once")
    return seeds


def _tokens(value: Any) -> list[str | int]:
    items = _comma_list(value)
    if not items:
        raise _Bad("selects no tokens (all selects every word)")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise _Bad(f"items must be words, phrases or token indices, got {_show(item)}")
    return [item.strip() if isinstance(item, str) else item for item in items]


def _kinds(value: Any) -> list[str]:
    items = _comma_list(value)
    if not items:
        raise _Bad(f"selects no maps; write e.g. kinds: [{', '.join(KINDS)}]")
    one = _choice(KINDS)
    kinds = []
    for item in items:
        kind = one(item)
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def _queries(value: Any) -> list:
    try:
        return parse_queries(value)
    except QueryProblem as problem:
        raise _Bad(str(problem)) from None


def _selection_syntax(value: Any) -> Any:
    """Syntax check of capture.layers / capture.steps (contract/selection.py's grammar); the
    values are checked later against the model (layers) or the sampler (steps)."""
    try:
        selection.parse(value)
    except selection.SelectionError as bad:
        raise _Bad(str(bad).rstrip(".").replace(f"; write {selection.GRAMMAR_HINT}", "")) from None
    return value


def _selected(spec: "RunSpec", key: str, available: range, what: str) -> list[int]:
    """The values capture.steps / capture.layers select from `available`; a UserError naming
    the key's line (or flag) and what is available otherwise."""
    try:
        return [available[i] for i in selection.select(getattr(spec.capture, key.split(".")[1]), available, what)]
    except selection.SelectionError as bad:
        raise spec.error(key, str(bad)) from None


# ---------------------------------------------------------------------------- the keys


@dataclass(frozen=True)
class _Key:
    """One prompt-file key and its CLI flag: the one table both are made from (commands.py
    builds `ovi-attn capture`'s options from it)."""

    name: str  # dotted path: "seed", "capture.tokens"
    default: Any  # None: the key may be null ("unset")
    check: Callable[[Any], Any]
    example: str  # a valid line, for "write e.g. ..." hints
    cli_scalar: bool = False  # CLI strings are read as YAML scalars ("5" -> 5, "true" -> True)
    help: str = ""  # the flag's help text
    flag: str = ""  # the CLI flag; "": --<last part of the name>, underscores as dashes
    cli_type: type = str  # what the flag takes: str, int, float or bool (an --x/--no-x switch)
    metavar: str = "<text>"
    shown_default: str | None = None  # the [default: ...] text; None: the default itself

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.split(".")[-1].replace("_", "-")

    @property
    def example_value(self) -> str:
        """The example's value alone ("seed: 100" -> "100"), for flag hints."""
        return self.example.split(":", 1)[1].strip()

    @property
    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, str) and " " in self.default:
            return f'"{self.default}"'
        return str(self.default)


_KEY_LIST = [
    _Key("prompt", "", _text, 'prompt: "A man runs in a park."', help="Replace the prompt text.",
         shown_default="the file's"),
    _Key("video_negative_prompt", VIDEO_NEGATIVE_PROMPT, _text, f'video_negative_prompt: "{VIDEO_NEGATIVE_PROMPT}"',
         help="Text of the video branch's unconditional (negative) pass; --branch uncond maps attend to it."),
    _Key("audio_negative_prompt", AUDIO_NEGATIVE_PROMPT, _text, f'audio_negative_prompt: "{AUDIO_NEGATIVE_PROMPT}"',
         help="Text of the audio branch's negative pass."),
    _Key("seed", 100, _integer(0, 2**63 - 1), "seed: 100", True, help="Random seed.", cli_type=int, metavar="<int>"),
    _Key("height", None, _integer(32, 4096), "height: 720", True, cli_type=int, metavar="<int>",
         help="Video height (rescaled to the model's area, multiples of 32).", shown_default="the model's"),
    _Key("width", None, _integer(32, 4096), "width: 720", True, help="Video width.", cli_type=int, metavar="<int>",
         shown_default="the model's"),
    _Key("model", registry.DEFAULT_MODEL, _choice(MODELS), "model: 720x720_5s", metavar="<name>",
         help=f"{', '.join(MODELS[:-1])} or {MODELS[-1]}; overriding the file's model drops its "
              "model-only keys (ckpt_dir, fp8, size, slg_layer, layers)."),
    _Key("ckpt_dir", None, _path, "ckpt_dir: /data/ovi/ckpts", help="Ovi's checkpoint folder (released models).",
         metavar="<path>", shown_default="none"),
    _Key("steps", 50, _integer(1, 1000), "steps: 50", True, help="Denoising steps.", flag="--num-steps",
         cli_type=int, metavar="<int>"),
    _Key("solver", "unipc", _choice(SOLVERS), "solver: unipc", help=f"{', '.join(SOLVERS[:-1])} or {SOLVERS[-1]}.",
         metavar="<name>"),
    _Key("shift", 5.0, _number(0, above=True), "shift: 5.0", True, help="Sigma shift of the schedule.",
         cli_type=float, metavar="<float>"),
    _Key("video_guidance_scale", 4.0, _number(0), "video_guidance_scale: 4.0", True, cli_type=float,
         metavar="<float>", help="Classifier-free guidance strength of the video (cond - uncond, scaled)."),
    _Key("audio_guidance_scale", 3.0, _number(0), "audio_guidance_scale: 3.0", True, cli_type=float,
         metavar="<float>", help="Classifier-free guidance strength of the audio."),
    _Key("slg_layer", None, _integer(-1), "slg_layer: 11", True, help="Block skipped in the negative pass (-1: none).",
         cli_type=int, metavar="<int>", shown_default="the model's, 11 for released models"),
    _Key("mode", None, _choice(MODES), "mode: t2v", help="t2v or i2v.", metavar="<mode>",
         shown_default="t2v, i2v with --image"),
    _Key("image", None, _path, "image: first_frame.png", help="First frame for i2v.", metavar="<path>",
         shown_default="none"),
    _Key("dtype", "bfloat16", _choice(DTYPES), "dtype: bfloat16", help="Compute dtype: bfloat16 or float32.",
         metavar="<dtype>"),
    _Key("device", "auto", _device, "device: auto", help="auto, cpu, cuda or cuda:N.", metavar="<dev>"),
    _Key("cpu_offload", False, _boolean, "cpu_offload: false", True, cli_type=bool,
         help="Keep each component on the GPU only while used."),
    _Key("fp8", False, _boolean, "fp8: false", True, cli_type=bool,
         help=f"Use the float8 checkpoint ({', '.join(registry.fp8_models())} only)."),
    _Key("output", None, _path, "output: run.h5", metavar="<path>",
         help="Output .h5; for a batch, the folder of its files.",
         shown_default="the file's output:, else <prompt-file>.h5 here"),
    _Key("max_file_gb", 20.0, _number(0, above=True), "max_file_gb: 20", True, cli_type=float, metavar="<GB>",
         help="Refuse captures larger than this (1 GB = 10^9 bytes).", shown_default="20"),
    _Key("seeds", None, _seeds, "seeds: [1, 2, 3]", help="A seed sweep, comma separated: 1,2,3 (one file per seed).",
         metavar="<list>", shown_default="the file's seeds:, else one run with --seed"),
    _Key("sp_size", 1, _integer(1, 1024), "sp_size: 2", True, cli_type=int, metavar="<int>",
         help="Sequence parallel: processes per prompt (under torchrun)."),
    _Key("queries", None, _queries, QUERY_EXAMPLE, True, metavar="<yaml>", shown_default="none",
         help="Query points for self-attention maps, as YAML: '[{frame: 60, x: 0.5, y: 0.3, label: face}]'."),
    _Key("capture.tokens", ["all"], _tokens, "tokens: [man, park]", metavar="<list>",
         help="Token selections, comma separated: man,park,man#2,all.", shown_default="all"),
    _Key("capture.layers", "all", _selection_syntax, 'layers: "10-19"', metavar="<sel>",
         help="Layers to capture: all, 10-19,25 or 0:30:2."),
    _Key("capture.steps", "all", _selection_syntax, "steps: {every: 5}", flag="--capture-steps",
         metavar="<sel>", help="Steps to capture: all, 0:50:5, every 5."),
    _Key("capture.kinds", list(KINDS), _kinds, "kinds: [text_video, text_audio]", metavar="<list>",
         help=f"Maps to capture, comma separated: {', '.join(KINDS)}.", shown_default="all four"),
    _Key("capture.branch", "cond", _choice(BRANCHES), "branch: cond", metavar="<name>",
         help="Guidance pass to capture: cond (the prompt), uncond (the negative prompts) or both."),
    _Key("capture.heads", "mean", _choice(HEADS), "heads: mean", help="mean over heads, or all heads.",
         metavar="<mode>"),
    _Key("capture.dtype", "int16", _choice(MAP_DTYPES), "dtype: int16", flag="--map-dtype", metavar="<enc>",
         help="Map encoding: int16 (CF-packed), float32, float32-deflate or float16."),
]
KEYS: dict[str, _Key] = {k.name: k for k in _KEY_LIST}
_PATH_KEYS = ("ckpt_dir", "image", "output")

# CLI flag -> key. `steps` (sampler) and `capture.steps` (which steps to record) would clash
# as --steps, so they are --num-steps and --capture-steps; the map dtype is --map-dtype.
OVERRIDABLE: dict[str, str] = {k.cli_flag: k.name for k in _KEY_LIST}
_FLAG_OF = {key: flag for flag, key in OVERRIDABLE.items()}

# Names from Ovi's own inference yaml, so a pasted upstream key gets a precise hint.
_UPSTREAM_NAMES = {
    "text_prompt": "prompt",
    "sample_steps": "steps",
    "solver_name": "solver",
    "model_name": "model",
    "output_dir": "output",
    "video_frame_height_width": "height and width",
}


# ---------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class _Origin:
    """Where a value came from: a line of the file, a CLI flag, or the defaults."""

    source: str
    line: int | None = None
    flag: str | None = None

    def __str__(self) -> str:
        if self.flag:
            return self.flag
        return f"{self.source}, line {self.line}" if self.line else self.source

    def error(self, key: str, problem: str) -> UserError:
        """"example.yaml, line 7: seed must be ..." or "--seed must be ..."."""
        if self.flag:
            return UserError(f"{self.flag} {problem}")
        return UserError(f"{self}: {key} {problem}")

    def error_sentence(self, key: str, sentence: str) -> UserError:
        """Prefix a full sentence (e.g. from token_groups) with the location."""
        return UserError(f"{self.flag}: {sentence}" if self.flag else f"{self}: {key}: {sentence}")


@dataclass
class _Place:
    line: int  # 1-based line of the key
    node: yaml.Node  # its value node (list items carry their own lines)


def _yaml_error(err: yaml.YAMLError, source: str) -> UserError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if "\t" in problem or "'\\t'" in problem:
        fix = "indent with spaces, not tabs"
    elif "mapping values are not allowed" in problem:
        fix = 'put text that contains ": " in double quotes, e.g. prompt: "A man says: hello"'
    elif "expected a single document" in problem:
        fix = "keep one document per file (remove the extra ---)"
    else:
        fix = "check the quoting and indentation there"
    return UserError(f"{where}: the YAML does not parse ({problem}); {fix}")


def _unknown_key_error(name: str, line: int, source: str) -> UserError:
    section, _, leaf = name.rpartition(".")
    siblings = [k.split(".")[-1] for k in KEYS if k.startswith(f"{section}.")] if section else [
        k for k in KEYS if "." not in k] + ["capture"]
    if not section and f"capture.{leaf}" in KEYS and leaf not in KEYS:
        hint = f"'{leaf}' belongs under capture: (indent it below a capture: line)"
    elif section and leaf in KEYS:
        hint = f"'{leaf}' belongs at the top level, not under capture:"
    elif not section and leaf in _UPSTREAM_NAMES:
        hint = f"Ovi's inference yaml calls it that, here it is {_UPSTREAM_NAMES[leaf]}"
    elif close := difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6):
        hint = f"did you mean '{close[0]}'?"
    elif section:
        hint = f"the keys under capture: are {', '.join(siblings)}"
    else:
        hint = "docs/PROMPT.md lists the valid keys"
    return UserError(f"{source}, line {line}: unknown key '{name}'; {hint}")


def _key_places(root: yaml.MappingNode, source: str) -> dict[str, _Place]:
    """Line and value node of every key, refusing unknown and repeated keys."""
    places: dict[str, _Place] = {}

    def walk(node: yaml.MappingNode, prefix: str) -> None:
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise UserError(f"{source}, line {line}: a key must be a plain name like seed; fix that line")
            name = prefix + str(key_node.value)
            if name in places:
                raise UserError(
                    f"{source}, line {line}: key '{name}' is set twice (first on line {places[name].line}); keep one of them"
                )
            if name not in KEYS and name != "capture":
                raise _unknown_key_error(name, line, source)
            places[name] = _Place(line, value_node)
            if name == "capture" and isinstance(value_node, yaml.MappingNode):
                walk(value_node, "capture.")

    walk(root, "")
    return places


# Selections are read from the YAML text itself: YAML 1.1 would turn the word `on` into
# True and the slice 10:30 into the base-60 number 630.
_RAW_KEYS = ("capture.tokens", "capture.layers", "capture.steps", "capture.kinds")


def _raw_value(node: yaml.Node) -> Any:
    """A node as written: plain digits become ints, every other scalar stays text."""
    if isinstance(node, yaml.SequenceNode):
        return [_raw_value(item) for item in node.value]
    if isinstance(node, yaml.MappingNode):
        return {str(k.value): _raw_value(v) for k, v in node.value}
    if node.tag == "tag:yaml.org,2002:null":
        return None
    if node.style is None and re.fullmatch(r"\d+", node.value):
        return int(node.value)
    return node.value


def _read_yaml(text: str, source: str) -> tuple[dict, dict[str, _Place]]:
    """The file's values (capture flattened to "capture.x" keys) and where each key is."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _yaml_error(err, source) from None
    if root is None:  # an empty file: everything from defaults and flags
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise UserError(f"{source} must be a list of key: value lines, such as {KEYS['prompt'].example}")
    places = _key_places(root, source)
    values = {k: v for k, v in data.items() if k != "capture"}
    capture = data.get("capture")
    if isinstance(capture, dict):
        values.update({f"capture.{k}": v for k, v in capture.items()})
        for name in _RAW_KEYS:
            if name in places:
                values[name] = _raw_value(places[name].node)
    elif capture is not None:
        raise UserError(
            f"{source}, line {places['capture'].line}: capture must hold indented keys (tokens:, layers:, ...), got {_show(capture)}"
        )
    return values, places


# ---------------------------------------------------------------------------- loading


def load_prompt_file(path: str | Path, overrides: dict | None = None) -> RunSpec:
    """Read and validate a prompt file; relative paths in it start from its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt file {path} does not exist; check the path (data/prompts/example.yaml is a template)") from None
    except (IsADirectoryError, UnicodeDecodeError) as err:
        raise UserError(f"prompt file {path} cannot be read ({err}); pass a UTF-8 .yaml file") from None
    spec = parse_prompt_text(text, source=str(path), overrides=overrides, base_dir=path.parent)
    spec.source_path = path
    return spec


def parse_prompt_text(
    text: str, source: str = "<string>", overrides: dict | None = None, base_dir: str | Path | None = None
) -> RunSpec:
    """Validate prompt-file text (+ CLI overrides) into a RunSpec. Relative paths in the
    text start from `base_dir` (default: the working directory); those in overrides start
    from the working directory."""
    file_values, places = _read_yaml(text, source)
    values: dict[str, Any] = {}
    origins: dict[str, _Origin] = {}
    for name, key in KEYS.items():  # the file's values over the defaults
        if name in file_values:
            origin = _Origin(source, places[name].line)
            values[name] = _checked(key, file_values[name], origin)
        else:
            origin = _Origin(source)
            values[name] = key.default
        origins[name] = origin
    for name, value in _named_overrides(overrides).items():  # the CLI's values over both
        origins[name] = _Origin(source, flag=_FLAG_OF.get(name, f"override {name}"))
        values[name] = _checked(KEYS[name], _from_cli(KEYS[name], value), origins[name])
    notes = _drop_other_models_keys(values, origins, file_values.get("model"))
    file_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    for name in _PATH_KEYS:
        if values[name] is not None:
            base = Path.cwd() if origins[name].flag else file_dir
            values[name] = _resolve_path(values[name], base)
    item_lines = _item_lines(places.get("capture.tokens"), origins["capture.tokens"])
    spec = _build(values, origins, text)
    spec.notes = notes
    _check_together(spec, origins, item_lines)
    return spec


def _drop_other_models_keys(values: dict[str, Any], origins: dict[str, _Origin], file_model: Any) -> list[str]:
    """--model replacing the file's model: the file's keys that only fit the file's model
    (its checkpoint folder, fp8 build, size, skip layer, layer selection) go back to their
    defaults, unless a flag set them too. Returns one note saying what was dropped."""
    new = values["model"]
    if not origins["model"].flag or not isinstance(file_model, str) or file_model.strip().lower() == new:
        return []
    old = file_model.strip().lower()
    released_old, released_new = _is_released(old), _is_released(new)
    drop = []
    if released_old != released_new:  # released <-> toy/tiny: other sizes, depths, no checkpoints
        drop = ["height", "width", "slg_layer", "capture.layers"] + ([] if released_new else ["ckpt_dir"])
    if not registry.get(new).has_fp8:
        drop.append("fp8")
    dropped = []
    for name in drop:
        origin = origins[name]
        if origin.flag or origin.line is None or values[name] == KEYS[name].default:
            continue  # set by a flag, or not set by the file: nothing to drop
        values[name] = KEYS[name].default
        origins[name] = _Origin(origin.source)
        dropped.append(name)
    if not dropped:
        return []
    return [f"--model {new} replaces the file's {old}, so the file's {', '.join(dropped)} "
            f"{'is' if len(dropped) == 1 else 'are'} left out (they fit {old} only)."]


def _named_overrides(overrides: dict | None) -> dict[str, Any]:
    """{flag or key: value} -> {key: value}, dropping flags the user did not give (None)."""
    named = {}
    for name, value in (overrides or {}).items():
        key = OVERRIDABLE.get(name, name)
        if key not in KEYS:
            raise ValueError(f"unknown override {name!r}; known: {', '.join(OVERRIDABLE)}")
        if value is not None:
            named[key] = value
    return named


def _from_cli(key: _Key, value: Any) -> Any:
    """CLI values arrive as strings: read numbers and booleans as YAML would."""
    if key.cli_scalar and isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _checked(key: _Key, value: Any, origin: _Origin) -> Any:
    example = _example(key, origin)
    if value is None:
        if key.default is None:
            return None
        raise origin.error(key.name, f"has no value; write e.g. {example}, or leave it out to use the default ({_default_text(key)})")
    try:
        return key.check(value)
    except _Bad as bad:
        raise origin.error(key.name, f"{bad}; write e.g. {example}") from None


def _example(key: _Key, origin: _Origin) -> str:
    """The key's example as the user would type it: a YAML line, or a CLI flag and value."""
    if not origin.flag:
        return key.example
    value = key.example.split(": ", 1)[1].strip('"')
    if value.startswith("["):  # flags take comma lists
        value = value.strip("[]").replace(", ", ",")
    return f"{origin.flag} {value}"


def _default_text(key: _Key) -> str:
    return ", ".join(map(str, key.default)) if isinstance(key.default, list) else str(key.default)


def _resolve_path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _item_lines(place: _Place | None, origin: _Origin) -> list[_Origin]:
    """One origin per capture.tokens item: its own line when the file wrote a block list."""
    if origin.flag or place is None or not isinstance(place.node, yaml.SequenceNode):
        return []
    return [_Origin(origin.source, item.start_mark.line + 1) for item in place.node.value]


def _build(values: dict[str, Any], origins: dict[str, _Origin], text: str) -> RunSpec:
    capture = CaptureSpec(**{k.split(".")[1]: v for k, v in values.items() if k.startswith("capture.")})
    top = {k: v for k, v in values.items() if "." not in k}
    top["mode"] = top["mode"] or ("i2v" if top["image"] is not None else "t2v")
    return RunSpec(**top, capture=capture, source_text=text, origins={k: str(o) for k, o in origins.items()})


def _check_together(spec: RunSpec, origins: dict[str, _Origin], item_lines: list[_Origin]) -> None:
    """The checks that involve several keys, in the order a user would fix them."""
    _check_prompt(spec, origins["prompt"])
    _check_seeds(spec, origins)
    _check_size(spec, origins)
    _check_image(spec, origins)
    _check_model(spec, origins)
    _selected(spec, "capture.steps", range(spec.steps), "sampler steps")
    if _is_released(spec.model):  # the toy and tiny models' depth is checked by resolve_model_defaults
        _selected(spec, "capture.layers", range(registry.num_layers(spec.model)), f"{spec.model} layers")
    _check_tokens(spec, origins["capture.tokens"], item_lines)
    _check_queries(spec, origins["queries"])


def _is_released(model: str) -> bool:
    return model in registry.MODELS and registry.MODELS[model].released


def _check_prompt(spec: RunSpec, where: _Origin) -> None:
    example = KEYS["prompt"].example
    if spec.prompt.strip():
        return
    if where.line or where.flag:
        raise where.error("prompt", f"is empty; write what the clip should show, e.g. {example}")
    raise UserError(f"{where.source} has no prompt; add a line such as {example}")


def _check_seeds(spec: RunSpec, o: dict[str, _Origin]) -> None:
    """seed and seeds together: a seed set on the command line wins; set twice in the file is a mistake."""
    if spec.seeds is None:
        return
    if o["seed"].flag and not o["seeds"].flag:
        spec.seeds = None  # --seed 5 on a sweep file: just that seed
    elif o["seed"].line and o["seeds"].line:
        raise o["seeds"].error("seeds", f"and seed (line {o['seed'].line}) are both set; keep seeds: for a sweep "
                                        "or seed: for one run")


def _check_size(spec: RunSpec, o: dict[str, _Origin]) -> None:
    if (spec.height is None) != (spec.width is None):
        given, other = ("height", "width") if spec.height is not None else ("width", "height")
        raise o[given].error(given, f"is set but {other} is not; set both, or neither for the model's native size")


def _check_image(spec: RunSpec, o: dict[str, _Origin]) -> None:
    if spec.mode == "t2v" and spec.image is not None:
        raise o["image"].error("image", "is only used by mode: i2v; set mode: i2v or remove image")
    if spec.mode == "i2v" and spec.image is None:
        raise o["mode"].error(
            "mode", "is i2v but no image is set; add image: path/to/first_frame.png (relative to the prompt file)"
        )
    if spec.image is not None and not spec.image.is_file():
        base = "the working directory" if o["image"].flag else "the prompt file's folder"
        raise o["image"].error(
            "image", f"names {spec.image}, which is not a file; fix the path (relative paths start from {base})"
        )


def _check_model(spec: RunSpec, o: dict[str, _Origin]) -> None:
    released = _is_released(spec.model)
    if released and spec.ckpt_dir is None:
        raise o["model"].error(
            "model",
            f"is {spec.model}, which needs ckpt_dir (the folder Ovi's download_weights.py makes); add "
            "ckpt_dir: /path/to/ckpts or pass --ckpt-dir, or use model: tiny to try the tool without weights",
        )
    if spec.ckpt_dir is not None and not spec.ckpt_dir.is_dir():
        raise o["ckpt_dir"].error(
            "ckpt_dir", f"names {spec.ckpt_dir}, which is not a folder; point it at the folder Ovi's download_weights.py made"
        )
    if spec.fp8 and not registry.get(spec.model).has_fp8:  # the one fp8 check
        fp8 = registry.fp8_models()
        raise o["fp8"].error(
            "fp8", f"is only available for {', '.join(fp8)}, not {spec.model}; set fp8: false or model: {fp8[0]}"
        )
    if released and spec.slg_layer is not None and spec.slg_layer >= registry.num_layers(spec.model):
        raise o["slg_layer"].error(
            "slg_layer",
            f"is {spec.slg_layer}, but {spec.model} has layers 0 to {registry.num_layers(spec.model) - 1}; "
            "use 11 (the default) or -1 to turn skip-layer guidance off",
        )


def _check_tokens(spec: RunSpec, origin: _Origin, item_lines: list[_Origin]) -> None:
    """Each selection must fit the prompt (unknown words, occurrences, spans) now, not
    after the model has loaded."""
    text = clean_prompt_text(spec.prompt)
    for i, selection in enumerate(spec.capture.tokens):
        try:
            check_selection(selection, text, text_len=TEXT_LEN)
        except UserError as err:
            where = item_lines[i] if i < len(item_lines) else origin
            raise where.error_sentence("capture.tokens", str(err)) from None


def _check_queries(spec: RunSpec, origin: _Origin) -> None:
    """Adaptive queries name a token of the prompt and a step the sampler runs."""
    text = clean_prompt_text(spec.prompt)
    for i, q in enumerate(spec.queries or []):
        if q.adaptive:
            try:
                check_selection(q.token, text, text_len=TEXT_LEN)
            except UserError as err:
                raise origin.error_sentence("queries", f"item {i + 1} ({q.label}): {err}") from None
    try:
        check_against_run(spec.queries or [], spec.steps)
    except UserError as err:
        raise origin.error_sentence("queries", str(err).removeprefix("queries: ")) from None


def resolve_model_defaults(
    spec: RunSpec,
    *,
    num_layers: int | None = None,
    native_size: tuple[int, int] | None = None,
    default_slg_layer: int | None = None,
) -> RunSpec:
    """Fill the keys left to the model (height, width, slg_layer) and turn capture.layers
    and capture.steps into sorted index lists. Released models know their facts; for the
    tiny model pass them in. Raises UserError (naming the key's line) for layers the model
    lacks."""
    if _is_released(spec.model):
        facts = registry.default_facts(spec.model)
        num_layers = num_layers if num_layers is not None else facts["num_layers"]
        native_size = native_size or facts["native_size"]
        default_slg_layer = facts["default_slg_layer"] if default_slg_layer is None else default_slg_layer
    if num_layers is None or native_size is None or default_slg_layer is None:
        raise ValueError(f"model {spec.model!r}: pass num_layers, native_size and default_slg_layer")
    slg = default_slg_layer if spec.slg_layer is None else spec.slg_layer
    if slg >= num_layers:
        raise spec.error(
            "slg_layer",
            f"is {slg}, but the {spec.model} model has layers 0 to {num_layers - 1}; "
            "pick one of those or -1 to turn skip-layer guidance off",
        )
    layers = _selected(spec, "capture.layers", range(num_layers), f"{spec.model} layers")
    steps = _selected(spec, "capture.steps", range(spec.steps), "sampler steps")
    height, width = (spec.height, spec.width) if spec.height is not None else native_size
    capture = replace(spec.capture, layers=layers, steps=steps)
    return replace(spec, height=height, width=width, slg_layer=slg, capture=capture)
