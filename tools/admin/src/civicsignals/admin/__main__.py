import sys

from civicsignals.admin.cli import main

sys.exit(main())
