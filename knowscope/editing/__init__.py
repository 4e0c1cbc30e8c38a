"""knowscope.editing"""
