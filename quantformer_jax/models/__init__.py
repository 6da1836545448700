"""Models: patch transformer, vector quantizer, masking, VQ tokenizer and QuantCoder."""
