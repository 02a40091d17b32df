"""Zero-shot labelling and ranking: POST /classify and POST /rank."""
