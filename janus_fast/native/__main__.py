"""``python -m janus_fast.native``: build ``janus_fast._C`` now if needed and say which library is used."""

import sys

from janus_fast.native.loader import main

sys.exit(main())
