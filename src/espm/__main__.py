"""`python -m espm`: the same program as the `espm` console script."""

from espm.cli import main

raise SystemExit(main())
