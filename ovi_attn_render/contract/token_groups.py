"""Which text tokens a map is about: words, the token table, and the selection grammar.

Pure Python (no torch), so `ovi-attn tokens` and prompt-file validation run anywhere.

A token is a `Token` (or any object with `.index, .id, .piece, .start, .end`): `start, end`
is its character span in the cleaned prompt, and the last token is EOS with
`start == end == len(text)`. Pieces are sentencepiece pieces: "▁" marks a leading space,
and a lone "▁" piece (empty span, or a span of only whitespace) belongs to the word after it.
`TokenTable` is the one token-table type: the cleaned text, its tokens (each with the word
that owns it) and the groups; capture builds it from the tokenizer, the reader from the
file, and `TokenTable.find` resolves a name at render with the grammar below.

Words: a tag (`<S>`, `<E>`, `<AUDCAP>`, `<ENDAUDCAP>`) is one word; a maximal run of
letters/digits (apostrophes allowed inside: "don't") is one word; every other non-space
character is a word of its own. Every real token is owned by exactly one word (a piece
that straddles two words, like "!<", goes to the first), so the groups of `all` cover
every real token exactly once and, with `<eos>` and `<pad>`, sum to 1 for every query.

Selection grammar (see docs/PROMPT.md):
    man            first occurrence of the word (case-insensitive)
    man#2          its second occurrence
    running at     a phrase: consecutive words, the union of their pieces (`running at#2`)
    #5 / 5         token index 5;  #3-6 / 3-6: tokens 3..6 as one group
    speech         the text inside <S>...<E> (all spans); speech#2: the second span
    audio_caption  the text inside <AUDCAP>...<ENDAUDCAP>, or after "Audio:"
    all            every word as its own group
The result always ends with `<eos>` and `<pad>` (the zero-padded keys up to text_len).
"""

from __future__ import annotations

import difflib
import html
import re
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ovi_attn_render.common.errors import UserError

SPAN_NAMES = ("speech", "audio_caption")
EOS_LABEL, PAD_LABEL = "<eos>", "<pad>"
TEXT_LEN = 512  # umT5 keys per prompt: the real tokens, then zero padding

# Tags first so "<S>" is one word; [^\W_] is a letter or digit; apostrophes only inside.
_WORD_RE = re.compile(r"<S>|<E>|<AUDCAP>|<ENDAUDCAP>|[^\W_]+(?:['’][^\W_]+)*|\S")
_INDEX_RE = re.compile(r"#?\s*(\d+)(?:\s*-\s*(\d+))?")
_OCCURRENCE_RE = re.compile(r"(.*\S)#(\d+)", re.DOTALL)  # "man#2"; "item #2" is a phrase
try:  # upstream collapses whitespace with `regex`; `re` differs only on a few control characters
    import regex as _regex

    _WHITESPACE_RE = _regex.compile(r"\s+")
except ImportError:  # pragma: no cover
    _WHITESPACE_RE = re.compile(r"\s+")


def clean_prompt_text(text: str) -> str:
    """The text as the umT5 tokenizer sees it: ftfy, html unescape (twice), whitespace
    collapsed to single spaces, stripped. Token spans index into this string."""
    try:  # ftfy ships with the capture extra; without it only mojibake fixes are lost
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE_RE.sub(" ", text).strip()


@dataclass
class Word:
    index: int
    text: str
    start: int  # character span in the cleaned text, end exclusive
    end: int
    token_indices: list[int] = field(default_factory=list)  # tokens this word owns


@dataclass
class TokenGroup:
    label: str  # the `token` coordinate in the capture file
    kind: str  # "word", "phrase", "span", "index", "eos", "pad" or "all-word"
    token_indices: list[int]  # text keys summed for this group (pad: the padding keys)
    occurrence: int = 1  # which occurrence of its words (man#2: 2), to find it in another prompt


@dataclass
class Token:
    """One text token of the cleaned prompt (the last one is EOS)."""

    index: int
    id: int
    piece: str  # sentencepiece piece, "▁" marks a leading space
    start: int  # character span in the cleaned prompt; EOS has start == end == len(text)
    end: int
    word: str = ""  # the word that owns it ("" for EOS and for pieces no word owns)
    word_index: int = -1  # that word's position among the prompt's words (-1: none)


# ---------------------------------------------------------------------------- words


def words_of(text: str, tokens: Sequence[Any] | None = None) -> list[Word]:
    """Split `text` into words and give each real token to exactly one word.

    With `tokens=None` the words come back without tokens (prompt-file validation uses
    this before the tokenizer is loaded).
    """
    words = [Word(i, m.group(), m.start(), m.end()) for i, m in enumerate(_WORD_RE.finditer(text))]
    if not tokens or not words:
        return words
    for tok in _real_tokens(tokens):
        owner = _owner_word(text, words, tok.start, tok.end)
        words[owner].token_indices.append(tok.index)
    return words


def _real_tokens(tokens: Sequence[Any]) -> Sequence[Any]:
    """All tokens but the final EOS."""
    return tokens[:-1]


def _owner_word(text: str, words: list[Word], start: int, end: int) -> int:
    """Index of the word a token with span [start, end) belongs to."""
    if text[start:end].strip():  # the piece has visible characters: first word it overlaps
        for w in words:
            if w.start < end and w.end > start:
                return w.index
    # A lone "▁" (empty or whitespace span) belongs to the next word; at the very end, the last.
    for w in words:
        if w.start >= start:
            return w.index
    return words[-1].index


def _word_tokens(word: Word, tokens: Sequence[Any]) -> list[int]:
    """Tokens of one word for an explicit selection: the ones it owns or, when a piece
    that started in the previous word swallowed it (")," owns ","), the pieces over it."""
    if word.token_indices:
        return list(word.token_indices)
    return [t.index for t in _real_tokens(tokens) if t.start < word.end and t.end > word.start]


def _tokens_of_words(words: Sequence[Word], tokens: Sequence[Any]) -> list[int]:
    return sorted({i for w in words for i in _word_tokens(w, tokens)})


# ---------------------------------------------------------------------------- parsing


@dataclass
class _Selection:
    """One parsed selection: what the user asked for, before it meets the prompt."""

    raw: str
    what: str  # all | eos | pad | index | span | text
    first: int = 0  # index: first..last token
    last: int = 0
    name: str = ""  # span: speech | audio_caption
    words: list[str] = field(default_factory=list)  # text: the words of a word or phrase
    occurrence: int | None = None  # 1-based; None = first (text) or all spans (span)


def _parse_selection(sel: str | int) -> _Selection:
    if isinstance(sel, bool) or not isinstance(sel, (str, int)):
        raise UserError(f"token selection {sel!r} must be a word, a phrase or a token index; write e.g. man, man#2 or #5")
    if isinstance(sel, int):
        if sel < 0:
            raise UserError(f"token index {sel} is negative; token indices start at 0")
        return _Selection(str(sel), "index", first=sel, last=sel)
    s = sel.strip()
    if not s:
        raise UserError("an empty token selection was given; write a word of the prompt such as man")
    low = s.lower()
    if low == "all":
        return _Selection(s, "all")
    if low in (EOS_LABEL, PAD_LABEL):
        return _Selection(s, low.strip("<>"))
    m = _INDEX_RE.fullmatch(s)
    if m:
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        if last < first:
            raise UserError(f"token range '{s}' runs backwards; write the lower index first, e.g. #{last}-{first}")
        return _Selection(s, "index", first=first, last=last)
    base, occurrence = s, None
    m = _OCCURRENCE_RE.fullmatch(s)
    if m:
        base, occurrence = m.group(1), int(m.group(2))
        if occurrence < 1:
            raise UserError(f"'{s}': occurrences count from 1; write {base}#1 or just {base}")
    if base.lower() in SPAN_NAMES:
        return _Selection(s, "span", name=base.lower(), occurrence=occurrence)
    return _Selection(s, "text", words=_WORD_RE.findall(base), occurrence=occurrence)


def _spans(text: str, name: str) -> list[tuple[int, int]]:
    """Character ranges of the text inside each tag pair (an unclosed tag runs to the end)."""
    if name == "speech":
        pattern = r"<S>(.*?)(?:<E>|$)"
    else:
        pattern = r"<AUDCAP>(.*?)(?:<ENDAUDCAP>|$)"
    spans = [(m.start(1), m.end(1)) for m in re.finditer(pattern, text, re.DOTALL)]
    if name == "audio_caption" and not spans and "Audio:" in text:  # the 960 models' style
        start = text.rindex("Audio:") + len("Audio:")
        spans = [(start, len(text))]
    return spans


def _words_in(words: list[Word], span: tuple[int, int]) -> list[Word]:
    return [w for w in words if w.start >= span[0] and w.end <= span[1]]


def _occurrences(words: list[Word], target: list[str]) -> list[int]:
    """Start positions (word indices) of the case-insensitive word sequence `target`."""
    want = [t.lower() for t in target]
    have = [w.text.lower() for w in words]
    k = len(want)
    return [i for i in range(len(have) - k + 1) if have[i : i + k] == want]


def _unknown_text_error(sel: _Selection, words: list[Word]) -> UserError:
    vocabulary = sorted({w.text.lower() for w in words})
    missing = [t for t in sel.words if t.lower() not in vocabulary]
    if not missing:  # every word exists, just not next to each other
        return UserError(
            f"the words of '{sel.raw}' are all in the prompt but never in that order; select them one by one or copy the phrase from the prompt"
        )
    close = difflib.get_close_matches(missing[0].lower(), vocabulary, n=4, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "no close match"
    phrase = "" if len(sel.words) == 1 else f" (from the phrase '{sel.raw}')"
    return UserError(
        f"'{missing[0]}'{phrase} is not a word in the prompt ({hint}); pick a word of the prompt (`ovi-attn tokens` lists them)"
    )


def _match_text(sel: _Selection, words: list[Word], text: str) -> tuple[list[Word], str, int]:
    """The words a word/phrase selection names, its canonical label and occurrence number."""
    starts = _occurrences(words, sel.words)
    if not starts:
        raise _unknown_text_error(sel, words)
    n = sel.occurrence or 1
    base = " ".join(sel.words) if len(sel.words) > 1 else sel.words[0]
    if n > len(starts):
        choices = f"{base}" if len(starts) == 1 else f"{base}#1 to {base}#{len(starts)}"
        raise UserError(
            f"'{sel.raw}': the prompt has {len(starts)} occurrence{'s' if len(starts) > 1 else ''} of '{base}'; use {choices}"
        )
    chosen = words[starts[n - 1] : starts[n - 1] + len(sel.words)]
    label = text[chosen[0].start : chosen[-1].end] + (f"#{n}" if n > 1 else "")
    return chosen, label, n


def _match_span(sel: _Selection, words: list[Word], text: str) -> tuple[list[Word], str] | None:
    """The words inside the named tag span(s) and the label; None when the prompt has no
    such span (the caller may then read `speech` as a plain word)."""
    spans = _spans(text, sel.name)
    if not spans:
        return None
    if sel.occurrence is None or (len(spans) == 1 and sel.occurrence == 1):
        chosen_spans, label = spans, sel.name
    elif sel.occurrence > len(spans):
        raise UserError(
            f"'{sel.raw}': the prompt has {len(spans)} {sel.name} span{'s' if len(spans) > 1 else ''}; use {sel.name}#1 to {sel.name}#{len(spans)}"
        )
    else:
        chosen_spans, label = [spans[sel.occurrence - 1]], f"{sel.name}#{sel.occurrence}"
    inside = [w for span in chosen_spans for w in _words_in(words, span)]
    if not inside:
        raise UserError(f"'{sel.raw}': the {sel.name} span is empty; put some text between the tags or drop the selection")
    return inside, label


def _no_span_error(sel: _Selection) -> UserError:
    if sel.name == "speech":
        return UserError(f"'{sel.raw}': the prompt has no <S>...<E> speech span; add one or drop the selection")
    return UserError(
        f"'{sel.raw}': the prompt has no <AUDCAP>...<ENDAUDCAP> or 'Audio:' caption; add one or drop the selection"
    )


def _match_words(sel: _Selection, words: list[Word], text: str) -> tuple[list[Word], str, str, int]:
    """Words, label, kind and occurrence of a text or span selection (a span counts as 1:
    in another prompt it is found by its words)."""
    if sel.what == "span":
        found = _match_span(sel, words, text)
        if found is not None:
            return found[0], found[1], "span", 1
        # No speech span: `speech` may be the plain word "speech".
        if sel.name == "speech" and _occurrences(words, ["speech"]):
            sel = _Selection(sel.raw, "text", words=["speech"], occurrence=sel.occurrence)
        else:
            raise _no_span_error(sel)
    chosen, label, n = _match_text(sel, words, text)
    return chosen, label, "word" if len(chosen) == 1 else "phrase", n


def is_index_selection(sel: str | int) -> bool:
    """`#5`, `5`, `#3-6`: a selection by token index (checked once the prompt is tokenized)."""
    return _parse_selection(sel).what == "index"


def check_selection(sel: str | int, text: str, *, text_len: int = TEXT_LEN) -> None:
    """Raise the UserError `resolve_groups` would raise, from the text alone (before the
    tokenizer is loaded): unknown words, missing spans, occurrences, malformed indices.
    Index ranges are checked later, against the tokenized prompt."""
    parsed = _parse_selection(sel)
    # An index is checked once the prompt is tokenized (resolve_groups), against the prompt's
    # own token count: one message, one range (the 512 keys would be a second, wrong range).
    if parsed.what in ("text", "span"):
        _match_words(parsed, words_of(text), text)


# ---------------------------------------------------------------------------- groups


def _all_word_groups(words: list[Word]) -> list[TokenGroup]:
    """One group per word that owns tokens, labelled `word`, `word#2`, ... by occurrence."""
    seen: dict[str, int] = {}
    groups = []
    for w in words:
        n = seen[w.text.lower()] = seen.get(w.text.lower(), 0) + 1
        if w.token_indices:  # a word swallowed by the previous piece has nothing of its own
            groups.append(TokenGroup(w.text + (f"#{n}" if n > 1 else ""), "all-word", list(w.token_indices), n))
    return groups


def _add(merged: dict[str, TokenGroup], group: TokenGroup) -> None:
    """Add a group, merging duplicates (same label). A word also produced by `all` takes
    the kind "all-word", since it is still one part of the partition."""
    old = merged.get(group.label)
    if old is None:
        merged[group.label] = group
    elif old.token_indices == group.token_indices:
        if "all-word" in (old.kind, group.kind):
            old.kind = "all-word"
    else:  # the same text labels two different things (e.g. the phrase "#5" and token #5)
        merged[f"{group.label} ({group.kind})"] = group


def resolve_groups(
    selections: Sequence[str | int], text: str, tokens: Sequence[Any], *, text_len: int = TEXT_LEN
) -> list[TokenGroup]:
    """Turn the user's selections into token groups for the prompt `text` and its token
    table; the result ends with `<eos>` and `<pad>`. Raises UserError for selections that
    do not fit the prompt."""
    n = len(tokens)  # real tokens + EOS
    if n > text_len:
        raise ValueError(f"{n} tokens exceed text_len {text_len}")
    words = words_of(text, tokens)
    merged: dict[str, TokenGroup] = {}
    for raw in selections:
        sel = _parse_selection(raw)
        if sel.what == "all":
            for g in _all_word_groups(words):
                _add(merged, g)
        elif sel.what in ("eos", "pad"):
            continue  # always appended at the end
        elif sel.what == "index":
            if sel.last >= n:
                raise UserError(
                    f"token index in '{sel.raw}' is out of range; this prompt has tokens 0 to {n - 1} ({n - 1} is <eos>)"
                )
            label = f"#{sel.first}" if sel.first == sel.last else f"#{sel.first}-{sel.last}"
            _add(merged, TokenGroup(label, "index", list(range(sel.first, sel.last + 1))))
        else:
            chosen, label, kind, occurrence = _match_words(sel, words, text)
            indices = _tokens_of_words(chosen, tokens)
            if not indices:
                raise UserError(
                    f"'{sel.raw}' lies beyond the {text_len}-token limit, so the model never sees it; shorten the prompt or pick an earlier word"
                )
            _add(merged, TokenGroup(label, kind, indices, occurrence))
    _add(merged, TokenGroup(EOS_LABEL, "eos", [n - 1]))
    _add(merged, TokenGroup(PAD_LABEL, "pad", list(range(n, text_len))))
    return list(merged.values())


def group_words(group: TokenGroup, words: Sequence[Word]) -> list[str]:
    """The words (in prompt order) that own a token of the group; [] for eos/pad."""
    if group.kind in ("eos", "pad"):
        return []
    hit = set(group.token_indices)
    return [w.text for w in words if hit.intersection(w.token_indices)]


def group_for_other_text(
    group: TokenGroup, group_words: list[str], text: str, tokens: Sequence[Any], *, text_len: int = TEXT_LEN
) -> TokenGroup | None:
    """The same group in another prompt (the negative prompt of the `uncond` branch),
    found by its words and its occurrence number (`group.occurrence`). `<eos>` and `<pad>` always exist; a token
    index group, or words the other text lacks, give None (the map stays NaN)."""
    n = len(tokens)
    if group.kind == "eos":
        return replace(group, token_indices=[n - 1])
    if group.kind == "pad":
        return replace(group, token_indices=list(range(n, text_len)))
    if group.kind == "index" or not group_words:
        return None
    words = words_of(text, tokens)
    starts = _occurrences(words, group_words)
    if len(starts) < group.occurrence:
        return None
    chosen = words[starts[group.occurrence - 1] : starts[group.occurrence - 1] + len(group_words)]
    indices = _tokens_of_words(chosen, tokens)
    return replace(group, token_indices=indices) if indices else None


def group_members(groups: Sequence[TokenGroup], n_tokens: int) -> np.ndarray:
    """[G, T] uint8: 1 where group g holds token t (the file's token_group_members). Padding
    keys are not tokens of the table, so `<pad>`'s row stays empty."""
    m = np.zeros((len(groups), n_tokens), np.uint8)
    for g, grp in enumerate(groups):
        if grp.kind != "pad":
            m[g, list(grp.token_indices)] = 1
    return m


# ---------------------------------------------------------------------------- the table


@dataclass
class TokenTable:
    """The one token table: the cleaned prompt, its tokens (EOS last) and the token groups.

    Capture builds it with `TokenTable.of(text, tokens, selections)`; the reader from the
    file's token variables. `find` resolves any selection (`man#1`, `#3-4`, `PARK`, an exact
    label) to a group position, with the grammar capture used."""

    text: str
    tokens: list[Token]
    groups: list[TokenGroup] = field(default_factory=list)
    text_len: int = TEXT_LEN

    @classmethod
    def of(cls, text: str, tokens: Sequence[Any], selections: Sequence[str | int], *, text_len: int = TEXT_LEN) -> "TokenTable":
        """The table of a tokenized prompt: each token gets the word that owns it, and the
        selections become groups (ending with `<eos>` and `<pad>`)."""
        groups = resolve_groups(selections, text, tokens, text_len=text_len)
        owner = {i: w for w in words_of(text, tokens) for i in w.token_indices}
        rows = [Token(t.index, t.id, t.piece, t.start, t.end, owner[t.index].text if t.index in owner else "",
                      owner[t.index].index if t.index in owner else -1) for t in tokens]
        return cls(text, rows, groups, text_len)

    @property
    def labels(self) -> list[str]:
        return [g.label for g in self.groups]

    def find(self, selector: str | int) -> int:
        """Position of the group a selection names: its exact label, its label in any case,
        or the captured group holding exactly the tokens the selection resolves to in this
        prompt (`man#1` is `man`, `#4` is the word at token 4, `#3-4` a phrase over 3-4)."""
        sel = str(selector).strip()
        labels = self.labels
        if sel in labels:
            return labels.index(sel)
        lower = [g.lower() for g in labels]
        if sel.lower() in lower:
            return lower.index(sel.lower())
        wanted = self._resolve(selector)
        if wanted is not None and wanted.label in labels:  # `man#1` -> man, `5` -> #5
            return labels.index(wanted.label)
        for i, g in enumerate(self.groups):
            if wanted is not None and g.kind not in ("eos", "pad") and g.token_indices == wanted.token_indices:
                return i
        close = difflib.get_close_matches(sel, labels, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        shown = ", ".join(repr(g) for g in labels[:40]) + (" ..." if len(labels) > 40 else "")
        raise UserError(f"token '{sel}' was not captured{hint}; captured groups: {shown}.")

    def _resolve(self, selector: str | int) -> TokenGroup | None:
        """The group a selection makes in this prompt, or None (no prompt text, `all`, or a
        selection that does not fit the prompt)."""
        if not self.text or not self.tokens:
            return None
        try:
            if _parse_selection(selector).what in ("all", "eos", "pad"):
                return None
            return resolve_groups([selector], self.text, self.tokens, text_len=max(self.text_len, len(self.tokens)))[0]
        except UserError:
            return None

    def rows(self) -> list[dict]:
        """One JSON-able dict per token (EOS included), for `ovi-attn tokens`, `info`, the viewer
        and the API: index, id, piece, text, word, word_index, start, end, groups."""
        hits: dict[int, list[str]] = {}
        for g in self.groups:
            if g.kind != "pad":
                for i in g.token_indices:
                    hits.setdefault(i, []).append(g.label)
        return [{"index": t.index, "id": t.id, "piece": t.piece, "text": self.text[t.start:t.end], "word": t.word,
                 "word_index": t.word_index, "start": t.start, "end": t.end, "groups": hits.get(t.index, [])}
                for t in self.tokens]


def render_token_table(rows: Sequence[dict], console: Any, title: str = "prompt tokens") -> None:
    """Print the token table as a rich Table on `console` (a rich Console)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_lines=False)
    for name, justify in (("#", "right"), ("piece", "left"), ("word", "left"), ("word #", "right"),
                          ("chars", "right"), ("groups", "left")):
        table.add_column(name, justify=justify)
    for r in rows:
        table.add_row(
            str(r["index"]),
            Text(r["piece"]),  # Text(): pieces like "[" must not be read as rich markup
            Text(r["word"] or "(end of text)"),
            "" if r["word_index"] < 0 else str(r["word_index"]),
            f"{r['start']}-{r['end']}",
            Text(", ".join(r["groups"])),
        )
    console.print(table)
