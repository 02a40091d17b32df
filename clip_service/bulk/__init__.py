"""``clip-service embed``: inputs, part-file output, two backends (a service, the model in-process), the loop."""
