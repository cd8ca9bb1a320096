"""The data plane: listeners, the HTTP/1.1 proxy, upstream pools, runtime swaps, workers."""
