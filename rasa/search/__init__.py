"""``rasa search``: free-text person search with a trained checkpoint (issue #16)."""
