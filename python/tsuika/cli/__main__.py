"""``python -m tsuika.cli`` (and ``accelerate launch -m tsuika.cli train CONFIG``)."""

from tsuika.cli import main

main()
