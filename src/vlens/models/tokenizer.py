"""A deterministic WordPiece tokenizer for caption corpora (milliseconds, no training randomness).

The vocabulary is every character (alone and as a ``##`` continuation, so any word still splits into known
pieces) plus the most frequent whole words, ties broken alphabetically: the same captions always give the same
token ids, in any process and any order. (The ``tokenizers`` WordPiece trainer breaks frequency ties by hash
order, so the same captions gave a different vocabulary in every process; exact resume and seed-for-seed
comparisons need better.) Whole words also suit the closed grammar of generated captions.

Special tokens and ids: [PAD]=0, [UNK]=1, [CLS]=2 (BOS), [SEP]=3 (EOS/SEP), [MASK]=4 — the ids the BLIP/CLIP
presets expect.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(texts: Iterable[str], vocab_size: int = 1000):
    """A lower-casing ``BertTokenizerFast`` whose vocabulary is built from ``texts`` (see the module doc).

    The vocabulary holds at least the special tokens and all characters; ``vocab_size`` caps the whole words.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    chars = sorted({c for w in words for c in w})
    pieces = chars + [f"##{c}" for c in chars]
    room = max(vocab_size - len(SPECIAL_TOKENS) - len(pieces), 0)
    ranked = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:room]
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *pieces, *sorted(ranked)])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = norm, pre
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", bos_token="[CLS]", eos_token="[SEP]",
                             do_lower_case=True, model_max_length=64)
