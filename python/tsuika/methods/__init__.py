"""tsuika.methods."""
