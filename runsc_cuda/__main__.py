import sys

from runsc_cuda.cli import main

sys.exit(main())
