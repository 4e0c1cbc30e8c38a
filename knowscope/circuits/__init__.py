"""knowscope.circuits"""
