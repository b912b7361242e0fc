"""The 20-symbol character tokenizer of the knowledge-graph model, as a real fast tokenizer.

Upstream's ``CharTokenizer`` (spec 2.4) was a Python class that saved its vocabulary under
the name ``tokenizer.json`` without being one, so nothing else could load the checkpoint.
Here the same vocabulary and ids are a ``tokenizers`` WordLevel model behind a pre-tokenizer
that isolates every character, wrapped in ``PreTrainedTokenizerFast``: ``AutoTokenizer``,
vLLM and every ``entrain`` command load it from the checkpoint directory.

Text is tokenized character by character, so unlike upstream's the tokenizer is
concatenative: tokenize(a) + tokenize(b) == tokenize(a + b). No BOS is added (as upstream);
the end of a fact is the EOS token, appended by the caller.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

# Upstream ids: Q=0, P=1, digits 2-11, newline 12, space 13, '-' 14, '?' 15, then specials.
SYMBOLS = ["Q", "P", *"0123456789", "\n", " ", "-", "?"]
BOS, EOS, PAD, UNK = "<BOS>", "<EOS>", "<PAD>", "<UNK>"
VOCAB = {s: i for i, s in enumerate([*SYMBOLS, BOS, EOS, PAD, UNK])}


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` over the 20-symbol vocabulary."""
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
