"""`python -m service` is `chat-service`."""

import sys

from service.cli import main

sys.exit(main())
