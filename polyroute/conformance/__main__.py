"""``python -m polyroute.conformance config|run ...``"""

from polyroute.conformance.cli import main

raise SystemExit(main())
