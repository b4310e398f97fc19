"""`python -m orchestrator` runs the `referloop` command."""

from orchestrator.cli import main

main()
