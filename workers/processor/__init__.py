"""The ordered processor, by concern: batch dispatch (batch), handler runs (runner), what a
batch writes (emit), aggregate state (store), and timers (sweep)."""
