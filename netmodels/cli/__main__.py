"""``python -m netmodels.cli``: the ``netmodels`` console script."""

import sys

from netmodels.cli.main import main

sys.exit(main())
