"""knowscope.viewer"""
