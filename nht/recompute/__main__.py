"""``python -m nht.recompute TAG LOG INPUT... -- COMMAND``: the wrapper of every job (:mod:`nht.recompute.job`)."""

import sys

from nht.recompute.job import main

sys.exit(main())
