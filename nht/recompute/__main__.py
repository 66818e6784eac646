"""``python -m nht.recompute job ...`` (the wrapper of every job, see :mod:`nht.recompute.job`)."""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "job":
    from nht.recompute.job import main

    sys.exit(main(sys.argv[2:]))
print("usage: python -m nht.recompute job --tag JSON --inputs ... --outputs ... -- COMMAND", file=sys.stderr)
sys.exit(2)
