"""tsuika.data."""
