"""`python -m router` runs skiffd."""

import sys

from router.daemon import main

sys.exit(main())
