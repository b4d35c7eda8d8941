"""The word view on the real model: its tokenizer's words, a needle's number read as one word,
and the shipped checkpoint's table matching the tokenizer it was computed from."""
import torch

from namm.surprisal import word_start_table, word_sums


def test_the_real_tokenizer_splits_numbers_into_digits_that_make_one_word(lm):
    tok = lm.tokenizer
    ids = tok.encode("The special magic number for narrow-pillow is: 1186905.", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    table = word_start_table(tok)
    assert len(table) == len(tok)
    words, current = [], ""
    for piece, begins in zip(pieces, table[ids].tolist()):
        if begins and current:
            words.append(current)
            current = ""
        current += piece
    words.append(current)
    assert " 1186905" in words and "-pillow" in words and " narrow" in words
    # the number's surprisal adds up over its digits
    sur = torch.arange(len(ids), dtype=torch.float32)[None]
    sums = word_sums(sur, torch.tensor([ids]), table)
    digits = [i for i, p in enumerate(pieces) if p.isdigit()]
    assert len(digits) == 7 and len({float(sums[0, i]) for i in digits}) == 1
    assert float(sums[0, digits[0]]) >= float(sur[0, digits].sum())


def test_the_shipped_table_is_the_tokenizers(lm):
    from namm.checkpoints import default_checkpoint

    ckpt = torch.load(default_checkpoint(lm.name), weights_only=False)
    assert ckpt["word_starts_model"] == lm.name
    assert torch.equal(ckpt["word_starts"], word_start_table(lm.tokenizer))
