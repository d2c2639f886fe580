"""The LDMIC codec: per-view encoder, exact entropy model, joint decoder, weights registry."""
