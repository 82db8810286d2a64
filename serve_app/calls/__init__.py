"""The call layer: how one deployment calls another (deadlines, retries before the first byte, cancellation,
Ray's errors unwrapped) and how the streams it gets back are relayed. Every deployment calls the others
through it; it depends on config, errors and protocol only."""
