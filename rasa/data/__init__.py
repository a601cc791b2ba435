"""Data layer: SynthPEDES, raw-format parsers, the canonical annotation table, caption
cleaning, tokenizers and the token cache, downloads, and the training dataset."""
