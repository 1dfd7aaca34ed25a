"""`python -m nft_trl.cli COMMAND ...`: the `nft-trl` console script without the console script."""

import sys

from .main import main


sys.exit(main())
