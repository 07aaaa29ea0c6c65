"""tsuika.training."""
