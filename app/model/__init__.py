"""The data kubevents moves: the raw envelope, the normalised event and the enriched record."""
