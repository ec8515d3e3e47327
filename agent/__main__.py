import os
import sys

try:
    from agent.entry import main
except KeyboardInterrupt:  # Ctrl-C in the first milliseconds, before agent.entry can catch it
    sys.stderr.write("ferry: interrupted\n")
    sys.stderr.flush()
    os._exit(130)

sys.exit(main())
