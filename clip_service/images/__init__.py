"""Images: which URLs may be fetched, fetching them safely, and decoding untrusted bytes. No model, no web."""
