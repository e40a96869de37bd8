"""The special token ids every janus_fast vocabulary reserves (the tokenizer, the data pipeline and
the model config agree on them; a model config may name others)."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = 0, 1, 2, 3, 4

__all__ = ["PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID", "MASK_ID"]
