"""The prompt text of the user's own rows: field, messages, template; chat and plain."""

import pytest

from entrainment_cli.data.texts import TextSource, render, template_fields
from entrainment_cli.errors import UserError

ROW = {"q": "What is 2 + 2?", "topic": "sums", "n": 3}


def test_template_fields_and_filling():
    assert template_fields("Topic {topic}: {q} ({topic})") == ["topic", "q"]
    source = TextSource(template="[{topic}] {q} x{n}")
    assert source.fields() == {
        "--template {topic}": "topic",
        "--template {q}": "q",
        "--template {n}": "n",
    }
    assert source.content(ROW, "row 0") == "[sums] What is 2 + 2? x3"
    assert TextSource(text_field="n").content(ROW, "row 0") == "3"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{} and {q}", "positional placeholder"),
        ("{0}", "positional placeholder"),
        ("no fields", "names no field"),
        ("{q", "not a valid template"),
    ],
)
def test_bad_templates_are_one_line(template, message):
    with pytest.raises(UserError, match=message):
        TextSource(template=template).fields()


def test_exactly_one_text_source():
    with pytest.raises(UserError, match="exactly one of"):
        TextSource()
    with pytest.raises(UserError, match=r"got --text-field, --template"):
        TextSource(text_field="q", template="{q}")


def test_messages_are_checked():
    source = TextSource(messages_field="m")
    good = {"m": [{"role": "user", "content": "hi"}]}
    assert source.content(good, "row 0") == [{"role": "user", "content": "hi"}]
    for bad in ("text", [], [{"content": "no role"}]):
        with pytest.raises(UserError, match=r"row 4: --messages-field 'm' must hold"):
            source.content({"m": bad}, "row 4")


def test_render_chat_and_plain(embedded):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded.path)
    assert tok.chat_template
    text, fmt = render(tok, "What is 2 + 2?", "Be brief.", chat=True)
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert (text, fmt) == (expected, "chat")
    convo = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]
    text, _ = render(tok, convo, None, chat=True)  # ends with the answer: no generation prompt
    assert text == tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=False)
    assert render(tok, "What is 2 + 2?", "Be brief.", chat=False) == (
        "Be brief.\n\nWhat is 2 + 2?",
        "plain",
    )
    assert render(tok, convo, None, chat=False) == ("user: 2 + 2?\nassistant: 4", "plain")
    tok.chat_template = None  # a base model: plain text even with chat on
    assert render(tok, "x", None, chat=True) == ("x", "plain")


TEXT = ["--text-field", "q"]
MESSAGES = ["--messages-field", "m"]
M0 = "--messages-field 'm', message 0"


@pytest.mark.parametrize(
    ("row", "args", "subject", "shown"),
    [
        ({"q": None}, TEXT, "--text-field 'q'", "null"),
        ({"q": ""}, TEXT, "--text-field 'q'", "an empty string"),
        ({"q": [1, 2]}, TEXT, "--text-field 'q'", "list '[1, 2]'"),
        ({"q": None}, ["--template", "Q: {q}"], "--template field 'q'", "null"),
        ({"m": [{"role": "user", "content": None}]}, MESSAGES, f"{M0} 'content'", "null"),
        ({"m": [{"role": "user", "content": [1]}]}, MESSAGES, f"{M0} 'content'", "list '[1]'"),
        ({"m": [{"role": None, "content": "hi"}]}, MESSAGES, f"{M0} 'role'", "null"),
    ],
)  # fmt: skip
def test_probe_refuses_rows_without_text(cli, tiny_llama, tmp_path, row, args, subject, shown):
    """A null, empty or list text (or message) is one line and exit 2, naming the row and the
    field; it was probed as the literal text 'None' or '[1, 2]'."""
    import json

    data = tmp_path / "rows.jsonl"
    good = {key: [{"role": "user", "content": "hi"}] if key == "m" else "hi" for key in row}
    data.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    result = cli("probe", "--model", tiny_llama, "--data-file", data, *args, "--quiet")
    assert result.exit_code == 2, result.output
    expected = f"row 1: {subject} must be a non-empty string or a number, not {shown}; fix that row"
    assert f"{data.resolve()} {expected}" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_a_csv_empty_cell_is_no_text():
    with pytest.raises(UserError, match="row 2: --text-field 'q' .* not null"):
        TextSource(text_field="q").content({"q": float("nan")}, "row 2")
    assert TextSource(template="{n:.1f}").content({"n": 2.25}, "row 0") == "2.2"
