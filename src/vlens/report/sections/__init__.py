"""One module per report section; each exposes ``section(ctx) -> Section``."""
