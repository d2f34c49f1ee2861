import sys

from mlops.demo.story import main

sys.exit(main())
