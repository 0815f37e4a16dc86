"""Token groups over hand-built sentencepiece token tables (pieces and offsets as the
umT5 fast tokenizer gives them: "▁man" spans the space before it, a lone "▁" spans the
space, tags are split into plain pieces, EOS sits at the end with an empty span)."""

from __future__ import annotations

import io
import pytest

from ovi_attn_render.contract.token_groups import (
    Token,
    TokenGroup,
    TokenTable,
    check_selection,
    clean_prompt_text,
    group_for_other_text,
    group_words,
    render_token_table,
    resolve_groups,
    words_of,
)
from ovi_attn_render.common.errors import UserError


def make_tokens(text: str, pieces: list[str], *, space_in_span: bool = True, lone_empty: bool = False) -> list[Token]:
    """Lay sentencepiece pieces over `text` and append EOS. `space_in_span=False` gives
    "▁man" a span without its space; `lone_empty` gives a lone "▁" an empty span."""
    toks, pos = [], 0
    for i, piece in enumerate(pieces):
        start = pos
        if piece.startswith("▁") and pos < len(text) and text[pos] == " ":
            pos += 1
            if not space_in_span or (piece == "▁" and lone_empty):
                start = pos
        surface = piece[1:] if piece.startswith("▁") else piece
        assert text.startswith(surface, pos), (piece, text[pos:])
        pos += len(surface)
        toks.append(Token(i, 100 + i, piece, start, pos))
    assert pos == len(text), "pieces must cover the whole text"
    toks.append(Token(len(pieces), 1, "</s>", len(text), len(text)))
    return toks


P1 = "A man is skateboarding in a park. <S>Hello there, man!<E> <AUDCAP>wheels rolling, birds<ENDAUDCAP>"
P1_PIECES = [
    "▁A", "▁man", "▁is", "▁skate", "board", "ing", "▁in", "▁a", "▁park", ".",  # 0-9
    "▁", "<", "S", ">", "Hello", "▁there", ",", "▁man", "!<", "E", ">",  # 10-20
    "▁<", "AUD", "CAP", ">", "wheel", "s", "▁rolling", ",", "▁birds",  # 21-29
    "<", "END", "AUD", "CAP", ">",  # 30-34
]


@pytest.fixture(params=[dict(), dict(space_in_span=False), dict(lone_empty=True)], ids=["hf", "nospace", "lone-empty"])
def p1(request):
    return P1, make_tokens(P1, P1_PIECES, **request.param)


def labels(groups):
    return [g.label for g in groups]


def by_label(groups):
    return {g.label: g for g in groups}


def test_words_split_tags_punctuation_and_multi_piece_words(p1):
    text, toks = p1
    words = words_of(text, toks)
    assert [w.text for w in words] == [
        "A", "man", "is", "skateboarding", "in", "a", "park", ".", "<S>", "Hello", "there", ",", "man", "!",
        "<E>", "<AUDCAP>", "wheels", "rolling", ",", "birds", "<ENDAUDCAP>",
    ]
    w = {x.text: x for x in words}
    assert w["skateboarding"].token_indices == [3, 4, 5]
    assert w["<S>"].token_indices == [10, 11, 12, 13]  # the lone "▁" belongs to the next word
    assert w["!"].token_indices == [18]  # "!<" straddles "!" and "<E>": the first word owns it
    assert w["<E>"].token_indices == [19, 20]
    assert w["wheels"].token_indices == [25, 26]


def test_all_covers_every_real_token_exactly_once(p1):
    text, toks = p1
    groups = resolve_groups(["all"], text, toks)
    words = [g for g in groups if g.kind == "all-word"]
    covered = [i for g in words for i in g.token_indices]
    assert sorted(covered) == list(range(len(toks) - 1))  # no gaps, no repeats
    assert labels(groups)[:3] == ["A", "man", "is"]
    assert "man#2" in labels(groups) and "a#2" in labels(groups) and ",#2" in labels(groups)
    assert labels(groups)[-2:] == ["<eos>", "<pad>"]


def test_nth_occurrence_and_its_errors(p1):
    text, toks = p1
    g = by_label(resolve_groups(["man", "man#2"], text, toks))
    assert g["man"].token_indices == [1] and g["man"].kind == "word"
    assert g["man#2"].token_indices == [17]
    with pytest.raises(UserError, match=r"'man#3': the prompt has 2 occurrences of 'man'; use man#1 to man#2"):
        resolve_groups(["man#3"], text, toks)
    with pytest.raises(UserError, match="occurrences count from 1"):
        resolve_groups(["man#0"], text, toks)


def test_phrases(p1):
    text, toks = p1
    g = by_label(resolve_groups(["in a park", "IN A PARK#1", "there, man"], text, toks))
    assert g["in a park"].token_indices == [6, 7, 8] and g["in a park"].kind == "phrase"
    assert g["there, man"].token_indices == [15, 16, 17]
    assert len(g) == 4  # the two spellings of "in a park" merged, + <eos>, <pad>
    with pytest.raises(UserError, match="never in that order"):
        resolve_groups(["park man"], text, toks)
    with pytest.raises(UserError, match=r"'running' \(from the phrase 'running at'\) is not a word in the prompt"):
        resolve_groups(["running at"], text, toks)


def test_token_indices_and_ranges(p1):
    text, toks = p1
    groups = resolve_groups(["#3-5", 5, "5", "#5", " 3 - 5 "], text, toks)
    assert labels(groups) == ["#3-5", "#5", "<eos>", "<pad>"]
    assert groups[0].token_indices == [3, 4, 5] and groups[0].kind == "index"
    n = len(toks)
    with pytest.raises(UserError, match=rf"tokens 0 to {n - 1} \({n - 1} is <eos>\)"):
        resolve_groups([f"#{n}"], text, toks)
    with pytest.raises(UserError, match="runs backwards"):
        resolve_groups(["#6-3"], text, toks)


def test_tag_spans(p1):
    text, toks = p1
    g = by_label(resolve_groups(["speech", "audio_caption"], text, toks))
    assert g["speech"].token_indices == [14, 15, 16, 17, 18]  # Hello there, man!
    assert g["speech"].kind == "span"
    assert g["audio_caption"].token_indices == [25, 26, 27, 28, 29]  # wheels rolling, birds
    assert labels(resolve_groups(["speech#1"], text, toks))[0] == "speech"  # one span: same group


def test_several_speech_spans_and_audio_colon_caption():
    text = "<S>Hi<E> then <S>Bye now<E>. Audio: loud barking"
    pieces = ["▁<", "S", ">", "Hi", "<", "E", ">", "▁then", "▁<", "S", ">", "By", "e", "▁now", "<", "E", ">", ".",
              "▁Audio", ":", "▁loud", "▁bark", "ing"]
    toks = make_tokens(text, pieces)
    g = by_label(resolve_groups(["speech", "speech#2", "audio_caption"], text, toks))
    assert g["speech"].token_indices == [3, 11, 12, 13]
    assert g["speech#2"].token_indices == [11, 12, 13]
    assert g["audio_caption"].token_indices == [20, 21, 22]
    with pytest.raises(UserError, match="has 2 speech spans; use speech#1 to speech#2"):
        resolve_groups(["speech#3"], text, toks)


def test_missing_span_and_speech_as_a_plain_word():
    text = "A speech at dawn"
    toks = make_tokens(text, ["▁A", "▁speech", "▁at", "▁dawn"])
    assert resolve_groups(["speech"], text, toks)[0].token_indices == [1]
    with pytest.raises(UserError, match="no <AUDCAP>...<ENDAUDCAP> or 'Audio:' caption"):
        resolve_groups(["audio_caption"], text, toks)


def test_unknown_word_lists_close_matches(p1):
    text, toks = p1
    with pytest.raises(UserError, match=r"'mna' is not a word in the prompt \(close matches: man\)"):
        resolve_groups(["mna"], text, toks)
    with pytest.raises(UserError, match="close matches: skateboarding"):
        resolve_groups(["skatebording"], text, toks)
    with pytest.raises(UserError, match="no close match"):
        resolve_groups(["xylophone"], text, toks)


def test_eos_and_pad_end_every_result(p1):
    text, toks = p1
    n = len(toks)
    groups = resolve_groups(["man", "<eos>", "<pad>"], text, toks, text_len=40)
    assert labels(groups) == ["man", "<eos>", "<pad>"]
    assert groups[1].kind == "eos" and groups[1].token_indices == [n - 1]
    assert groups[2].kind == "pad" and groups[2].token_indices == list(range(n, 40))


def test_duplicates_merge_and_all_keeps_its_kind(p1):
    text, toks = p1
    groups = resolve_groups(["Man", "man", "man#1", "all"], text, toks)
    assert labels(groups).count("man") == 1
    assert by_label(groups)["man"].kind == "all-word"  # still one part of the partition
    assert by_label(groups)["man"].token_indices == [1]


def test_piece_that_swallows_a_word():
    text = "A (brown), cat"
    toks = make_tokens(text, ["▁A", "▁(", "brown", "),", "▁cat"])
    words = {w.text: w for w in words_of(text, toks)}
    assert words[")"].token_indices == [3] and words[","].token_indices == []
    groups = resolve_groups(["all"], text, toks)
    assert sorted(i for g in groups if g.kind == "all-word" for i in g.token_indices) == [0, 1, 2, 3, 4]
    assert "," not in labels(groups)  # nothing of its own to show
    assert by_label(resolve_groups([","], text, toks))[","].token_indices == [3]  # explicit: the piece over it


def test_digits_are_indices_unless_written_as_an_occurrence():
    text = "2 dogs and 2 cats"
    toks = make_tokens(text, ["▁2", "▁dogs", "▁and", "▁2", "▁cats"])
    g = by_label(resolve_groups(["2", "2#1", "2#2"], text, toks))
    assert g["#2"].token_indices == [2]  # token index 2 ("▁and")
    assert g["2"].token_indices == [0] and g["2#2"].token_indices == [3]


def test_words_cut_off_by_truncation():
    text = "A man runs far away"
    toks = make_tokens("A man", ["▁A", "▁man"])  # as if the tokenizer truncated here
    with pytest.raises(UserError, match="beyond the 512-token limit"):
        resolve_groups(["away"], text, toks)


def test_lookup_in_the_negative_prompt():
    text = "Bad hands and a blur, then a blur again"
    toks = make_tokens(text, ["▁Bad", "▁hands", "▁and", "▁a", "▁blur", ",", "▁then", "▁a", "▁blur", "▁again"])
    neg = "jitter, bad hands, blur, distortion"
    neg_toks = make_tokens(neg, ["▁jitter", ",", "▁bad", "▁hands", ",", "▁blur", ",", "▁dis", "tortion"])
    words = words_of(text, toks)
    groups = by_label(resolve_groups(["bad hands", "blur", "blur#2", "again", "#2"], text, toks))
    found = {}
    for label, g in groups.items():
        found[label] = group_for_other_text(g, group_words(g, words), neg, neg_toks)
    assert group_words(groups["Bad hands"], words) == ["Bad", "hands"]  # labels keep the prompt's spelling
    assert found["Bad hands"].token_indices == [2, 3] and found["Bad hands"].label == "Bad hands"
    assert found["blur"].token_indices == [5]
    assert found["blur#2"] is None  # the negative prompt has one blur only
    assert found["again"] is None and found["#2"] is None
    assert found["<eos>"].token_indices == [len(neg_toks) - 1]
    assert found["<pad>"].token_indices == list(range(len(neg_toks), 512))


def test_token_table_rows_and_rendering(p1):
    text, toks = p1
    rows = TokenTable.of(text, toks, ["skateboarding", "#3-4", "speech"]).rows()
    assert len(rows) == len(toks)
    assert rows[4]["word"] == "skateboarding" and rows[4]["word_index"] == 3
    assert rows[4]["groups"] == ["skateboarding", "#3-4"]
    assert rows[-1]["word"] == "" and rows[-1]["word_index"] == -1 and rows[-1]["groups"] == ["<eos>"]
    assert rows[-1]["start"] == rows[-1]["end"] == len(text)
    from rich.console import Console

    out = io.StringIO()
    render_token_table(rows + [dict(rows[0], piece="[bold]", groups=[])], Console(file=out, width=200))
    printed = out.getvalue()
    assert "▁skate" in printed and "[bold]" in printed and "skateboarding, #3-4" in printed


def test_check_selection_from_text_alone():
    text = clean_prompt_text("A  man &amp; a dog.\n<S>Hi<E>")
    assert text == "A man & a dog. <S>Hi<E>"
    # indices are checked once tokenized, against the prompt's own range (issue 14, item 9)
    for ok in ["man", "a#2", "speech", "man & a", "#511", "#999", 7, "all"]:
        check_selection(ok, text)
    for bad, message in [("dgo", "close matches: dog"), ("man#2", "1 occurrence of 'man'"),
                         ("audio_caption", "no <AUDCAP>"), ("", "empty")]:
        with pytest.raises(UserError, match=message):
            check_selection(bad, text)


def test_negative_prompt_lookup_reads_the_occurrence_not_the_label():
    text = "a blur, then a blur"
    toks = make_tokens(text, ["▁a", "▁blur", ",", "▁then", "▁a", "▁blur"])
    second = by_label(resolve_groups(["blur#2"], text, toks))["blur#2"]
    assert second.occurrence == 2
    renamed = TokenGroup("blur#2 (word)", second.kind, second.token_indices, second.occurrence)  # a merged label
    found = group_for_other_text(renamed, ["blur"], text, toks)
    assert found.token_indices == [5] and found.label == "blur#2 (word)"
