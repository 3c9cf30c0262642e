"""Speed benchmarks: GGL candidates per second, batched vs serial, share of the FLOP limit, memory."""
