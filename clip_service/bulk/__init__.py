"""``clip-service embed``: inputs, part-file output, two backends (a service, the model in-process), the loop."""

# --dtype: what the command stores the vectors as -> the service's format of those values (clip_service/encodings.py),
# pyarrow-free so the command line can list them. binary is the signs as bits, 8 dimensions a byte, the first in
# the top bit: the service's ubinary (numpy.unpackbits reads it).
DTYPES = {"float32": "float", "float16": "float16", "int8": "int8", "binary": "ubinary"}
