"""The frozen program's entry point: the same as the `espm` console script."""

from espm.cli import main

raise SystemExit(main())
