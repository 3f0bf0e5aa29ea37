"""Revisions of the MySQL sink's table, oldest first: 0001 the table, 0002 the query indexes."""
