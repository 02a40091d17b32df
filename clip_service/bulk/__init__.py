"""``clip-service embed``: inputs, the part-file output, the two backends (a service, the model in-process), the loop."""
