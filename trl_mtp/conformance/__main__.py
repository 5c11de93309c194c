import sys

from trl_mtp.conformance.report import main

sys.exit(main())
