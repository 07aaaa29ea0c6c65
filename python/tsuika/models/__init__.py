"""tsuika.models."""
