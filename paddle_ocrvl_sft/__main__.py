import sys

from paddle_ocrvl_sft.cli import main

sys.exit(main())
