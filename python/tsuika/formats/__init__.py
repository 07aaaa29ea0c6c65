"""tsuika.formats."""
