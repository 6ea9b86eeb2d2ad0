"""Search indexes: full-text (`text`) and vector (`vector`), kept in columns of their table's rows."""
