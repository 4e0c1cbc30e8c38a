"""knowscope.probes"""
