import sys

from nht.cli import main

sys.exit(main())
