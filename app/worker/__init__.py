"""The worker side of every pipeline: the Faust app factory (app.py) and the batch loop that
commits only after the write (batch_loop.py)."""
