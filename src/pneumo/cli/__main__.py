"""``python -m pneumo.cli``: the ``pneumo`` command."""

import sys

from pneumo.cli.root import main

sys.exit(main())
