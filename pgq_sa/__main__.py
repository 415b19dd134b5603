"""``python -m pgq_sa`` runs the command line."""

from pgq_sa._cli import main

main()
