"""`kubevents produce` and `kubevents replay`: list/watch source, bounded publisher, replay of
dumps."""
