import sys

from rasa.cli import main

sys.exit(main())
