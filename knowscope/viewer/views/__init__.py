"""One module per viewer page; each has ``render_page(cfg)``."""
