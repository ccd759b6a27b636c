"""Network functions built on cogs: packet input, the flow splitter, the example NFs."""
