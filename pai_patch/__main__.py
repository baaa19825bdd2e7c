import sys

from pai_patch.cli import main

sys.exit(main())
