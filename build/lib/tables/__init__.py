"""seqguard state: pure cores for sequence, seen IDs and the reorder buffer, and their Faust table factories.

Nothing here imports faust, aiokafka or redis: the factories take the app as an argument.
"""
