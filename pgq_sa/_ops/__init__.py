"""Operations: every database conversation, written once as generators of statements."""
