"""`python -m agent` is the same as the `edge-agent` console script."""

import sys

try:
    from agent.cli import main
except KeyboardInterrupt:  # Ctrl-C while importing: no traceback (agent/cli.py)
    sys.stderr.write("edge-agent: interrupted\n")
    sys.exit(130)

sys.exit(main())
