"""Allow ``python -m relearn_local``."""

from .cli import main

main()
