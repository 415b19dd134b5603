"""``python -m pgq_sa`` runs the command line."""

from pgq_sa.cli import main

main()
